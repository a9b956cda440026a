# Data: (optional) render the built-in demo audio -> ingest into 4 s clips -> mel-spectrograms.


rule render_demo:
    input:
        # a user's SoundFont is an input (a changed file reruns the render); null = the one inside pretty_midi
        soundfont=lambda w: ds_cfg(w)["render"].get("soundfont") or [],
    output:
        manifest=f"{R}/{{dataset}}/raw/manifest.json",
    params:
        render=lambda w: ds_cfg(w)["render"],
        sample_rate=lambda w: ds_cfg(w)["sample_rate"],
        code=code_hash("render"),
    log:
        "logs/{dataset}/render_demo.log",
    benchmark:
        "benchmarks/{dataset}/render_demo.tsv"
    conda:
        "../envs/deepfeat.yaml"
    script:
        "../scripts/render_demo.py"


rule ingest:
    input:
        source=ingest_source,
    output:
        clips=f"{R}/{{dataset}}/clips.h5",
    params:
        root=ingest_root,
        dataset=lambda w: ds_cfg(w),
        name=lambda w: w.dataset,
        on_error=config["ingest"]["on_error"],
        code=code_hash("ingest", "audio"),
    log:
        "logs/{dataset}/ingest.log",
    benchmark:
        "benchmarks/{dataset}/ingest.tsv"
    conda:
        "../envs/deepfeat.yaml"
    script:
        "../scripts/ingest.py"


rule melspec:
    input:
        clips=f"{R}/{{dataset}}/clips.h5",
    output:
        mel=f"{R}/{{dataset}}/mel.h5",
    params:
        mel=config["mel"],
        code=code_hash("mel"),
    log:
        "logs/{dataset}/melspec.log",
    benchmark:
        "benchmarks/{dataset}/melspec.tsv"
    conda:
        "../envs/deepfeat.yaml"
    script:
        "../scripts/melspec.py"
