# Hand-crafted feature store: one HDF5 dataset per feature, every clip.


rule handcrafted:
    input:
        clips=f"{R}/{{dataset}}/clips.h5",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        features=f"{R}/{{dataset}}/handcrafted.h5",
    log:
        "logs/{dataset}/handcrafted.log",
    benchmark:
        "benchmarks/{dataset}/handcrafted.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        tuning=tuning("handcrafted"),
    params:
        settings=settings("handcrafted"),
        code=code_hash("handcrafted"),
    script:
        "../scripts/handcrafted.py"
