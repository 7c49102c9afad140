# Learning-rate search: each candidate trained with the search seed for lr_search.epochs, per
# (dataset, model, variant); the best validation accuracy wins, a diverged candidate loses.


rule lr_search:
    input:
        data=prepared,
    output:
        **run_files(f"{RESULTS}/lr_search/{CANDIDATE}"),
    log:
        f"{RESULTS}/logs/lr_search/{CANDIDATE}.log",
    conda:
        "../envs/normdrop.yaml"
    threads: EXEC["threads"]
    resources:
        gpu=GPU_PER_JOB,
    params:
        out=output_dir,
        checkpoint=f"{RESULTS}/scratch/lr_search/{CANDIDATE}.ckpt",
        settings=search_args,
        device=device_args,
    shell:
        "OMP_NUM_THREADS={threads} python -m normdrop.train --data {input.data}"
        " --out {params.out} --checkpoint {params.checkpoint} {params.settings}"
        " {params.device} >> {log} 2>&1"


rule select_lr:
    input:
        lr_candidates,
    output:
        f"{RESULTS}/lr_search/{{dataset}}/{{model}}/{{variant}}/selected.json",
    log:
        f"{RESULTS}/logs/select_lr/{{dataset}}/{{model}}/{{variant}}.log",
    conda:
        "../envs/normdrop.yaml"
    resources:
        gpu=0,
    shell:
        "python -m normdrop.aggregate select-lr --out {output} {input} > {log} 2>&1"
