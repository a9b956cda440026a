# Results: tidy tables (CSV + Markdown), seaborn figures and the findings page, collected by `snakemake --report`.
# Every output goes through report(): `snakemake --report results/report.html` shows, per dataset, the tables,
# the figures and the findings page (the front page is report/workflow.rst, named in the Snakefile).


rule tables:
    input:
        mel=f"{R}/{{dataset}}/mel.h5",
        probe_handcrafted=f"{R}/{{dataset}}/probes/handcrafted.csv",
        confusion_handcrafted=f"{R}/{{dataset}}/probes/handcrafted.confusion.csv",
        probe_deep=lambda w: probe_deep_files(w.dataset),
        confusion_deep=lambda w: [f.removesuffix(".csv") + ".confusion.csv" for f in probe_deep_files(w.dataset)],
        histories=lambda w: history_files(w.dataset),
        similarity_deep=lambda w: similarity_deep_files(w.dataset),
        similarity_channels=lambda w: similarity_channel_files(w.dataset),
        similarity_cross=lambda w: similarity_cross_files(w.dataset),
        # the bootstrap replicates beside the probe and similarity CSVs (the comparisons' intervals)
        boot_probe_handcrafted=f"{R}/{{dataset}}/probes/handcrafted.boot.h5",
        boot_probe_deep=lambda w: boot_of(probe_deep_files(w.dataset)),
        boot_similarity_deep=lambda w: boot_of(similarity_deep_files(w.dataset)),
        boot_similarity_cross=lambda w: boot_of(similarity_cross_files(w.dataset)),
    output:
        tables=report(
            directory(f"{R}/{{dataset}}/tables"),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category="{dataset}",
            subcategory="Tables",
            labels={"dataset": "{dataset}", "table": "{name}"},
        ),
    log:
        "logs/{dataset}/tables.log",
    conda:
        "../envs/deepfeat.yaml"
    params:
        settings=settings("tables"),
        code=code_hash("tables"),
    script:
        "../scripts/tables.py"


rule figures:
    input:
        tables=f"{R}/{{dataset}}/tables",
        mel=f"{R}/{{dataset}}/mel.h5",
        features=f"{R}/{{dataset}}/handcrafted.h5",
    output:
        figures=report(
            directory(f"{R}/{{dataset}}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="{dataset}",
            subcategory="Figures",
            labels={"dataset": "{dataset}", "figure": "{name}"},
        ),
    log:
        "logs/{dataset}/figures.log",
    benchmark:
        "benchmarks/{dataset}/figures.tsv"
    conda:
        "../envs/deepfeat.yaml"
    params:
        settings=settings("figures"),
        code=code_hash("figures"),
    script:
        "../scripts/figures.py"


rule findings:
    input:
        tables=f"{R}/{{dataset}}/tables",
    output:
        md=f"{R}/{{dataset}}/findings.md",
        html=report(
            f"{R}/{{dataset}}/findings.html",
            caption="../report/findings.rst",
            category="{dataset}",
            subcategory="Findings",
            labels={"dataset": "{dataset}", "page": "findings"},
        ),
    log:
        "logs/{dataset}/findings.log",
    conda:
        "../envs/deepfeat.yaml"
    params:
        settings=settings("findings"),
        code=code_hash("findings"),
    script:
        "../scripts/findings.py"
