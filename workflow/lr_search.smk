# Learning-rate search: each candidate trained with the search seed for lr_search.epochs, per
# (dataset, model, variant); the best validation accuracy wins, a diverged candidate loses.
# TensorBoard event files go to <results>/tensorboard/, a tree that mirrors the run folders.
# Paths: normdrop.layout.


if FUSE["lr_search"]:

    # The search's candidates as one fused job, one learning rate per member.
    rule lr_search_fused:
        input:
            unpack(prepared_data),
        output:
            fused_outputs("lr_search"),
        log:
            layout.fused_log(RESULTS, "lr_search"),
        params:
            out=layout.checkpoint_dir(RESULTS, "lr_search"),
            checkpoint=fused_checkpoint("lr_search"),
            settings=fused_settings("lr_search"),
            members=fused_members("lr_search"),
            device=device_args,
        threads: EXEC["threads"]
        resources:
            gpu=GPU_PER_JOB,
        conda:
            "../envs/normdrop.yaml"
        shell:
            "OMP_NUM_THREADS={threads:q} python -m normdrop.train --data {input.data:q}"
            " --out {params.out:q} --checkpoint {params.checkpoint:q} {params.settings:q}"
            ' {params.members:q} {params.device:q} "$NORMDROP_TRACKING" >> {log:q} 2>&1'

else:

    rule lr_search:
        input:
            unpack(prepared_data),
        output:
            **layout.run_files(RESULTS, "lr_search"),
        log:
            layout.run_log(RESULTS, "lr_search"),
        params:
            out=output_dir,
            checkpoint=layout.checkpoint(RESULTS, "lr_search"),
            settings=search_args,
            device=device_args,
            tensorboard_dir=layout.tensorboard_dir(RESULTS, "lr_search"),
        threads: EXEC["threads"]
        resources:
            gpu=GPU_PER_JOB,
        conda:
            "../envs/normdrop.yaml"
        shell:
            "OMP_NUM_THREADS={threads:q} python -m normdrop.train --data {input.data:q}"
            " --out {params.out:q} --checkpoint {params.checkpoint:q} {params.settings:q}"
            ' {params.device:q} "$NORMDROP_TRACKING" --tensorboard-dir {params.tensorboard_dir:q}'
            " >> {log:q} 2>&1"


# lr_search.extend_at_edge > 0: at a pick at the grid's edge, this job trains the next rate on
# that side (x3 or /3) and chooses again, up to that many times (normdrop/lr_search.py; off by
# default, the paper's grid is fixed). It then trains, so it is no local rule and holds a GPU slot.
EXTEND_AT_EDGE = config["lr_search"].get("extend_at_edge", 0)


rule select_lr:
    input:
        unpack(prepared_data),
        metas=lr_candidates,
    output:
        layout.selected(RESULTS),
    log:
        layout.log(RESULTS, "select_lr", layout.CELL),
    params:
        extensions=EXTEND_AT_EDGE,
        scratch=layout.checkpoint_dir(RESULTS, "lr_search"),
        tensorboard=layout.tensorboard_cell_dir(RESULTS, "lr_search"),
        device=device_line,
    localrule: not EXTEND_AT_EDGE
    threads: EXEC["threads"] if EXTEND_AT_EDGE else 1
    resources:
        gpu=GPU_PER_JOB if EXTEND_AT_EDGE else 0,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "OMP_NUM_THREADS={threads:q} python -m normdrop.lr_search --out {output:q}"
        " --extend-at-edge {params.extensions:q} --data {input.data:q}"
        " --scratch {params.scratch:q} --device-args={params.device:q}"
        ' --tensorboard-dir {params.tensorboard:q} --tracking-args="$NORMDROP_TRACKING"'
        " {input.metas:q}"
        " > {log:q} 2>&1"
