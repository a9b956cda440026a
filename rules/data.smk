# Data: (optional) render the built-in demo audio -> ingest into 4 s clips -> mel-spectrograms.


rule render_demo:
    input:
        # a user's SoundFont is an input (a changed file reruns the render); null = the one inside pretty_midi
        soundfont=lambda w: ds_cfg(w)["render"].get("soundfont") or [],
    output:
        manifest=f"{R}/{{dataset}}/raw/manifest.json",
    log:
        "logs/{dataset}/render_demo.log",
    benchmark:
        "benchmarks/{dataset}/render_demo.tsv"
    conda:
        "../envs/deepfeat.yaml"
    params:
        settings=settings("render_demo"),
        code=code_hash("render_demo"),
    script:
        "../scripts/render_demo.py"


rule ingest:
    input:
        source=ingest_source,
    output:
        clips=f"{R}/{{dataset}}/clips.h5",
    log:
        "logs/{dataset}/ingest.log",
    benchmark:
        "benchmarks/{dataset}/ingest.tsv"
    conda:
        "../envs/deepfeat.yaml"
    params:
        root=ingest_root,
        settings=settings("ingest"),
        code=code_hash("ingest"),
    script:
        "../scripts/ingest.py"


rule melspec:
    input:
        clips=f"{R}/{{dataset}}/clips.h5",
    output:
        mel=f"{R}/{{dataset}}/mel.h5",
    log:
        "logs/{dataset}/melspec.log",
    benchmark:
        "benchmarks/{dataset}/melspec.tsv"
    conda:
        "../envs/deepfeat.yaml"
    resources:
        tuning=tuning("melspec"),
    params:
        settings=settings("melspec"),
        code=code_hash("melspec"),
    script:
        "../scripts/melspec.py"
