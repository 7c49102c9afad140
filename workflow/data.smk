# download -> prepare: one job per raw source and per prepared file. Both are local rules
# (compute nodes of many clusters have no internet access). Paths: normdrop.layout; the names
# hold a hash of the settings that shape each file, so other settings make other files and a
# finished run's data is never rebuilt under it.
#
# The raw files are never a job's output: only the .downloaded flag is, and prepare takes it as
# ancient(). The flag's path holds every setting download uses (its params derive from it), so
# the download job runs only while the flag is missing: no later job, failing or not, has the
# flag among its outputs, and Snakemake's removal of a failed job's outputs cannot reach it.


rule download:
    output:
        layout.downloaded(RESOURCES),
    log:
        layout.log(RESULTS, "download", "{source}"),
    params:
        dataset=source_dataset,
        raw_dir=output_dir,
        synthetic=synthetic_args,
    resources:
        gpu=0,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "python -m normdrop.data download {params.dataset:q} --raw-dir {params.raw_dir:q}"
        " {params.synthetic:q} > {log:q} 2>&1 && touch {output:q}"


rule prepare:
    input:
        ancient(raw_flag),
    output:
        data=layout.prepared(RESOURCES),
        digest=layout.prepared_digest(RESOURCES),
    log:
        layout.log(RESULTS, "prepare", "{prepared}"),
    params:
        dataset=prepared_dataset,
        raw_dir=input_dir,
        val_fraction=config["data"]["val_fraction"],
        split_seed=config["data"]["split_seed"],
    resources:
        gpu=0,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "python -m normdrop.data prepare {params.dataset:q} --raw-dir {params.raw_dir:q}"
        " --out {output.data:q} --val-fraction {params.val_fraction:q}"
        " --split-seed {params.split_seed:q} > {log:q} 2>&1"
