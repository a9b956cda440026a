# Decoding probes: every hand-crafted feature and every layer of every network, on every task and its control
# task; each job also writes the bootstrap replicates of its test scores (*.boot.h5).


rule probe_handcrafted:
    input:
        features=f"{R}/{{dataset}}/handcrafted.h5",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        scores=f"{R}/{{dataset}}/probes/handcrafted.csv",
        confusion=f"{R}/{{dataset}}/probes/handcrafted.confusion.csv",
        boot=f"{R}/{{dataset}}/probes/handcrafted.boot.h5",
    log:
        "logs/{dataset}/probe_handcrafted.log",
    benchmark:
        "benchmarks/{dataset}/probe_handcrafted.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        gpu=1,
        runtime=120,
        mem_mb=8000,
        tuning=tuning("probe_handcrafted"),
    params:
        settings=settings("probe_handcrafted"),
        code=code_hash("probe_handcrafted"),
    script:
        "../scripts/probe_handcrafted.py"


rule probe_deep:
    input:
        model=f"{R}/{{dataset}}/models/{{task}}/{{conv_arch}}/seed{{seed}}.pt",
        features=f"{R}/{{dataset}}/handcrafted.h5",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        scores=f"{R}/{{dataset}}/probes/deep/{{task}}/{{conv_arch}}/seed{{seed}}.csv",
        confusion=f"{R}/{{dataset}}/probes/deep/{{task}}/{{conv_arch}}/seed{{seed}}.confusion.csv",
        boot=f"{R}/{{dataset}}/probes/deep/{{task}}/{{conv_arch}}/seed{{seed}}.boot.h5",
    log:
        "logs/{dataset}/probe_deep/{task}/{conv_arch}/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/probe_deep/{task}/{conv_arch}/seed{seed}.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        gpu=1,
        runtime=120,
        mem_mb=8000,
        tuning=tuning("probe_deep"),
    params:
        settings=settings("probe_deep"),
        code=code_hash("probe_deep"),
    script:
        "../scripts/probe_deep.py"
