# train(dataset, model, variant, seed) with the selected learning rate. The checkpoint lives in
# scratch/, not among the outputs, so that Snakemake never deletes it: a rerun of a killed job
# resumes from its last epoch (or last timed save). Paths: normdrop.layout.


if FUSE["train"]:

    # The cell's seeds as one fused job: its outputs are the seeds' run folders, its checkpoint
    # one file in scratch/ (a rerun resumes the whole job; deleting one member's folder reruns it).
    rule train_fused:
        input:
            unpack(prepared_data),
            lr=layout.selected(RESULTS),
        output:
            fused_outputs("train"),
        log:
            layout.fused_log(RESULTS, "train"),
        params:
            out=layout.checkpoint_dir(RESULTS, "train"),
            checkpoint=fused_checkpoint("train"),
            settings=fused_settings("train"),
            members=fused_members("train"),
            device=device_args,
        threads: EXEC["threads"]
        resources:
            gpu=GPU_PER_JOB,
        conda:
            "../envs/normdrop.yaml"
        shell:
            "OMP_NUM_THREADS={threads:q} python -m normdrop.train --data {input.data:q}"
            " --out {params.out:q} --lr-from {input.lr:q} --checkpoint {params.checkpoint:q}"
            ' {params.settings:q} {params.members:q} {params.device:q} "$NORMDROP_TRACKING"'
            " >> {log:q} 2>&1"

else:

    rule train:
        input:
            unpack(prepared_data),
            lr=layout.selected(RESULTS),
        output:
            **layout.run_files(RESULTS, "train"),
        log:
            layout.run_log(RESULTS, "train"),
        params:
            out=output_dir,
            checkpoint=layout.checkpoint(RESULTS, "train"),
            settings=train_args,
            device=device_args,
            tensorboard_dir=layout.tensorboard_dir(RESULTS, "train"),
        threads: EXEC["threads"]
        resources:
            gpu=GPU_PER_JOB,
        conda:
            "../envs/normdrop.yaml"
        shell:
            "OMP_NUM_THREADS={threads:q} python -m normdrop.train --data {input.data:q}"
            " --out {params.out:q} --lr-from {input.lr:q} --checkpoint {params.checkpoint:q}"
            ' {params.settings:q} {params.device:q} "$NORMDROP_TRACKING"'
            " --tensorboard-dir {params.tensorboard_dir:q} >> {log:q} 2>&1"
