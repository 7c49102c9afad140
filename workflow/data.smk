# download -> prepare: one job per dataset each.


rule download:
    output:
        f"{RESOURCES}/raw/{{dataset}}/.downloaded",
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    params:
        synthetic=synthetic_args,
    resources:
        gpu=0,
    shell:
        "{PY} normdrop.data download {wildcards.dataset}"
        " --raw-dir {RESOURCES}/raw/{wildcards.dataset} {params.synthetic} > {log} 2>&1"
        " && touch {output}"


rule prepare:
    input:
        f"{RESOURCES}/raw/{{dataset}}/.downloaded",
    output:
        f"{RESOURCES}/prepared/{{dataset}}.pt",
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    params:
        val_fraction=config["data"]["val_fraction"],
        split_seed=config["data"]["split_seed"],
    resources:
        gpu=0,
    shell:
        "{PY} normdrop.data prepare {wildcards.dataset}"
        " --raw-dir {RESOURCES}/raw/{wildcards.dataset} --out {output}"
        " --val-fraction {params.val_fraction} --split-seed {params.split_seed} > {log} 2>&1"
