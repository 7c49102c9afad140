# download -> prepare: one job per dataset each. Both are local rules (compute nodes of many
# clusters have no internet access). Paths: normdrop.layout.


rule download:
    output:
        layout.downloaded(RESOURCES),
    log:
        layout.log(RESULTS, "download", "{dataset}"),
    params:
        raw_dir=output_dir,
        synthetic=synthetic_args,
    resources:
        gpu=0,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "python -m normdrop.data download {wildcards.dataset:q} --raw-dir {params.raw_dir:q}"
        " {params.synthetic:q} > {log:q} 2>&1 && touch {output:q}"


rule prepare:
    input:
        layout.downloaded(RESOURCES),
    output:
        layout.prepared(RESOURCES),
    log:
        layout.log(RESULTS, "prepare", "{dataset}"),
    params:
        raw_dir=input_dir,
        val_fraction=config["data"]["val_fraction"],
        split_seed=config["data"]["split_seed"],
    resources:
        gpu=0,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "python -m normdrop.data prepare {wildcards.dataset:q} --raw-dir {params.raw_dir:q}"
        " --out {output:q} --val-fraction {params.val_fraction:q}"
        " --split-seed {params.split_seed:q} > {log:q} 2>&1"
