# Networks: train (initial weights kept beside the final ones), and the opt-in export of their activations
# (deep.store; every consumer computes the activations it needs from the model file instead). GPU rules.


rule train:
    input:
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        model=f"{R}/{{dataset}}/models/{{task}}/{{arch}}/seed{{seed}}.pt",
        history=f"{R}/{{dataset}}/models/{{task}}/{{arch}}/seed{{seed}}.history.csv",
    log:
        "logs/{dataset}/train/{task}/{arch}/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/train/{task}/{arch}/seed{seed}.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        gpu=1,
        runtime=lambda w: 60 + config["models"]["epochs"],
        mem_mb=8000,
        tuning=tuning("train"),
    params:
        checkpoint=lambda w: f"{R}/{w.dataset}/models/{w.task}/{w.arch}/seed{w.seed}.ckpt",
        settings=settings("train"),
        code=code_hash("train"),
    script:
        "../scripts/train.py"


rule extract:
    input:
        model=f"{R}/{{dataset}}/models/{{task}}/{{conv_arch}}/seed{{seed}}.pt",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        deep=f"{R}/{{dataset}}/deep/{{task}}/{{conv_arch}}/seed{{seed}}.h5",
    log:
        "logs/{dataset}/extract/{task}/{conv_arch}/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/extract/{task}/{conv_arch}/seed{seed}.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        gpu=1,
        runtime=60,
        mem_mb=8000,
        tuning=tuning("extract"),
    params:
        settings=settings("extract"),
        code=code_hash("extract"),
    script:
        "../scripts/extract.py"
