# train(dataset, model, variant, seed) with the selected learning rate. The checkpoint lives in
# scratch/, not among the outputs, so that Snakemake never deletes it: a rerun of a killed job
# resumes from its last epoch (or last timed save).


rule train:
    input:
        data=prepared,
        lr=f"{RESULTS}/lr_search/{{dataset}}/{{model}}/{{variant}}/selected.json",
    output:
        **run_files(f"{RESULTS}/runs/{RUN}"),
    log:
        f"{RESULTS}/logs/train/{RUN}.log",
    conda:
        "../envs/normdrop.yaml"
    threads: EXEC["threads"]
    resources:
        gpu=GPU_PER_JOB,
    params:
        out=output_dir,
        checkpoint=f"{RESULTS}/scratch/runs/{RUN}.ckpt",
        settings=train_args,
        device=device_args,
        tensorboard_dir=f"{RESULTS}/tensorboard/runs/{RUN}",
    shell:
        "OMP_NUM_THREADS={threads} python -m normdrop.train --data {input.data}"
        " --out {params.out} --lr-from {input.lr} --checkpoint {params.checkpoint}"
        " {params.settings} {params.device} {TRACKING}"
        " --tensorboard-dir {params.tensorboard_dir:q} >> {log} 2>&1"
