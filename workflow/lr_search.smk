# Learning-rate search: each candidate trained with the search seed for lr_search.epochs, per
# (dataset, model, variant); the best validation accuracy wins, a diverged candidate loses.
# TensorBoard event files go to <results>/tensorboard/, a tree that mirrors the run folders.
# TRACKING (on or off) sits in the shell command, not in params: Snakemake reruns a finished job
# whose params changed, and turning the live view off is no reason to train again.
TRACKING = "--tensorboard" if config["tracking"]["tensorboard"] else "--no-tensorboard"


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
        tensorboard_dir=f"{RESULTS}/tensorboard/lr_search/{CANDIDATE}",
    shell:
        "OMP_NUM_THREADS={threads} python -m normdrop.train --data {input.data}"
        " --out {params.out} --checkpoint {params.checkpoint} {params.settings}"
        " {params.device} {TRACKING} --tensorboard-dir {params.tensorboard_dir:q} >> {log} 2>&1"


# lr_search.extend_at_edge > 0: at a pick at the grid's edge, this job trains the next rate on
# that side (x3 or /3) and chooses again, up to that many times (normdrop/aggregate.py; off by
# default, the paper's grid is fixed). It then trains, so it is no local rule and holds a GPU slot.
EXTEND_AT_EDGE = config["lr_search"].get("extend_at_edge", 0)


rule select_lr:
    input:
        metas=lr_candidates,
        data=prepared,
    output:
        f"{RESULTS}/lr_search/{{dataset}}/{{model}}/{{variant}}/selected.json",
    log:
        f"{RESULTS}/logs/select_lr/{{dataset}}/{{model}}/{{variant}}.log",
    localrule: not EXTEND_AT_EDGE
    conda:
        "../envs/normdrop.yaml"
    threads: EXEC["threads"] if EXTEND_AT_EDGE else 1
    resources:
        gpu=GPU_PER_JOB if EXTEND_AT_EDGE else 0,
    params:
        extensions=EXTEND_AT_EDGE,
        scratch=f"{RESULTS}/scratch/lr_search/{{dataset}}/{{model}}/{{variant}}",
        device=device_args,
    shell:
        "OMP_NUM_THREADS={threads} python -m normdrop.aggregate select-lr --out {output}"
        " --extend-at-edge {params.extensions} --data {input.data} --scratch {params.scratch}"
        " --device-args={params.device:q} {input.metas} > {log} 2>&1"
