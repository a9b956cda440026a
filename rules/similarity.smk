# Representational similarity (CKA, debiased CKA, LR R2, CCA, SVCCA) of deep and hand-crafted features.


# Once per dataset: the hand-crafted features' self terms (z-scoring, covariance spectra, Gram-subset factors),
# shared by every similarity_deep job. Only the similarity settings that change these values are passed.
rule handcrafted_moments:
    input:
        features=f"{R}/{{dataset}}/handcrafted.h5",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        moments=f"{R}/{{dataset}}/similarity/handcrafted_moments.h5",
    params:
        similarity={k: config["similarity"][k] for k in ("max_features", "gram_max_clips", "seed")},
        code=code_hash("similarity"),
    resources:
        gpu=1,
        runtime=60,
        mem_mb=16000,
    log:
        "logs/{dataset}/handcrafted_moments.log",
    benchmark:
        "benchmarks/{dataset}/handcrafted_moments.tsv"
    conda:
        "../envs/deepfeat.yaml"
    script:
        "../scripts/handcrafted_moments.py"


rule similarity_deep:
    input:
        deep=f"{R}/{{dataset}}/deep/{{task}}/{{conv_arch}}/seed{{seed}}.h5",
        features=f"{R}/{{dataset}}/handcrafted.h5",
        moments=f"{R}/{{dataset}}/similarity/handcrafted_moments.h5",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        table=f"{R}/{{dataset}}/similarity/deep/{{task}}/{{conv_arch}}/seed{{seed}}.csv",
    params:
        similarity=config["similarity"],
        dataset=lambda w: w.dataset,
        code=code_hash("similarity"),
    resources:
        gpu=1,
        runtime=120,
        mem_mb=16000,
    log:
        "logs/{dataset}/similarity_deep/{task}/{conv_arch}/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/similarity_deep/{task}/{conv_arch}/seed{seed}.tsv"
    conda:
        "../envs/deepfeat.yaml"
    script:
        "../scripts/similarity_deep.py"


rule similarity_channels:
    input:
        model=f"{R}/{{dataset}}/models/{{task}}/{{conv_arch}}/seed{{seed}}.pt",
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        table=f"{R}/{{dataset}}/similarity/channels/{{task}}/{{conv_arch}}/seed{{seed}}.csv",
    params:
        similarity=config["similarity"],
        deep={"point": config["deep"]["point"]},  # the only deep setting channel similarity depends on
        dataset=lambda w: w.dataset,
        code=code_hash("similarity", "models", "deform", "extract"),
    resources:
        gpu=1,
        runtime=60,
        mem_mb=8000,
    log:
        "logs/{dataset}/similarity_channels/{task}/{conv_arch}/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/similarity_channels/{task}/{conv_arch}/seed{seed}.tsv"
    conda:
        "../envs/deepfeat.yaml"
    script:
        "../scripts/similarity_channels.py"


rule similarity_cross:
    input:
        deep=lambda w: [f for f in deep_files(w.dataset) if f"/deep/{w.task}/" in f],
        mel=f"{R}/{{dataset}}/mel.h5",
    output:
        table=f"{R}/{{dataset}}/similarity/cross/{{task}}.csv",
    params:
        similarity=config["similarity"],
        dataset=lambda w: w.dataset,
        code=code_hash("similarity"),
    resources:
        gpu=1,
        runtime=240,
        mem_mb=16000,
    log:
        "logs/{dataset}/similarity_cross/{task}.log",
    benchmark:
        "benchmarks/{dataset}/similarity_cross/{task}.tsv"
    conda:
        "../envs/deepfeat.yaml"
    script:
        "../scripts/similarity_cross.py"
