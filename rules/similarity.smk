# Representational similarity (CKA, debiased CKA, LR R2, CCA, SVCCA) of deep and hand-crafted features; the deep and
# cross jobs also write the bootstrap replicates of their CKA / debiased CKA values (*.boot.h5).


# Once per dataset: the hand-crafted features' self terms (z-scoring, covariance spectra, Gram-subset factors),
# shared by every similarity_deep job.
rule handcrafted_moments:
    input:
        features=f"{R}/{{dataset}}/handcrafted.h5",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        moments=f"{R}/{{dataset}}/similarity/handcrafted_moments.h5",
    log:
        "logs/{dataset}/handcrafted_moments.log",
    benchmark:
        "benchmarks/{dataset}/handcrafted_moments.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        gpu=1,
        runtime=60,
        mem_mb=16000,
        tuning=tuning("handcrafted_moments"),
    params:
        settings=settings("handcrafted_moments"),
        code=code_hash("handcrafted_moments"),
    script:
        "../scripts/handcrafted_moments.py"


rule similarity_deep:
    input:
        model=f"{R}/{{dataset}}/models/{{task}}/{{conv_arch}}/seed{{seed}}.pt",
        features=f"{R}/{{dataset}}/handcrafted.h5",
        moments=f"{R}/{{dataset}}/similarity/handcrafted_moments.h5",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        table=f"{R}/{{dataset}}/similarity/deep/{{task}}/{{conv_arch}}/seed{{seed}}.csv",
        boot=f"{R}/{{dataset}}/similarity/deep/{{task}}/{{conv_arch}}/seed{{seed}}.boot.h5",
    log:
        "logs/{dataset}/similarity_deep/{task}/{conv_arch}/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/similarity_deep/{task}/{conv_arch}/seed{seed}.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        gpu=1,
        runtime=120,
        mem_mb=16000,
        tuning=tuning("similarity_deep"),
    params:
        settings=settings("similarity_deep"),
        code=code_hash("similarity_deep"),
    script:
        "../scripts/similarity_deep.py"


rule similarity_channels:
    input:
        model=f"{R}/{{dataset}}/models/{{task}}/{{conv_arch}}/seed{{seed}}.pt",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        table=f"{R}/{{dataset}}/similarity/channels/{{task}}/{{conv_arch}}/seed{{seed}}.csv",
    log:
        "logs/{dataset}/similarity_channels/{task}/{conv_arch}/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/similarity_channels/{task}/{conv_arch}/seed{seed}.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        gpu=1,
        runtime=60,
        mem_mb=8000,
        tuning=tuning("similarity_channels"),
    params:
        settings=settings("similarity_channels"),
        code=code_hash("similarity_channels"),
    script:
        "../scripts/similarity_channels.py"


rule similarity_cross:
    input:
        models=lambda w: conv_model_files(w.dataset, w.task),
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        table=f"{R}/{{dataset}}/similarity/cross/{{task}}.csv",
        boot=f"{R}/{{dataset}}/similarity/cross/{{task}}.boot.h5",
    log:
        "logs/{dataset}/similarity_cross/{task}.log",
    benchmark:
        "benchmarks/{dataset}/similarity_cross/{task}.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        gpu=1,
        runtime=240,
        mem_mb=16000,
        tuning=tuning("similarity_cross"),
    params:
        settings=settings("similarity_cross"),
        code=code_hash("similarity_cross"),
    script:
        "../scripts/similarity_cross.py"
