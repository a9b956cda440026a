# Results: tidy tables (CSV + Markdown), seaborn figures and the findings page, collected by `snakemake --report`.
# Every output goes through report(): `snakemake --report results/report.html` shows, per dataset, the tables,
# the figures and the findings page (add `report: "report/workflow.rst"` to the Snakefile for the front page).


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
    output:
        tables=report(
            directory(f"{R}/{{dataset}}/tables"),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category="{dataset}",
            subcategory="Tables",
            labels={"dataset": "{dataset}", "table": "{name}"},
        ),
    params:
        dataset=lambda w: w.dataset,
        code=code_hash("tables"),
    log:
        "logs/{dataset}/tables.log",
    conda:
        "../envs/deepfeat.yaml"
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
    params:
        report=config["report"],
        dataset=lambda w: w.dataset,
        code=code_hash("plots", "tables"),
    log:
        "logs/{dataset}/figures.log",
    benchmark:
        "benchmarks/{dataset}/figures.tsv"
    conda:
        "../envs/deepfeat.yaml"
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
    params:
        report=config["report"],
        dataset=lambda w: w.dataset,
        code=code_hash("findings", "tables"),
    log:
        "logs/{dataset}/findings.log",
    conda:
        "../envs/deepfeat.yaml"
    script:
        "../scripts/findings.py"
