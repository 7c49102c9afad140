# download -> prepare: one job per dataset each. Both are local rules (compute nodes of many
# clusters have no internet access).


rule download:
    output:
        f"{RESOURCES}/raw/{{dataset}}/.downloaded",
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    conda:
        "../envs/normdrop.yaml"
    resources:
        gpu=0,
    params:
        raw_dir=output_dir,
        synthetic=synthetic_args,
    shell:
        "python -m normdrop.data download {wildcards.dataset} --raw-dir {params.raw_dir}"
        " {params.synthetic} > {log} 2>&1 && touch {output}"


rule prepare:
    input:
        f"{RESOURCES}/raw/{{dataset}}/.downloaded",
    output:
        f"{RESOURCES}/prepared/{{dataset}}.pt",
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    conda:
        "../envs/normdrop.yaml"
    resources:
        gpu=0,
    params:
        raw_dir=input_dir,
        val_fraction=config["data"]["val_fraction"],
        split_seed=config["data"]["split_seed"],
    shell:
        "python -m normdrop.data prepare {wildcards.dataset} --raw-dir {params.raw_dir}"
        " --out {output} --val-fraction {params.val_fraction}"
        " --split-seed {params.split_seed} > {log} 2>&1"
