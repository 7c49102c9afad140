"""First on PYTHONPATH, this makes snakemake and jsonschema unimportable in the process and in
every Python process it starts with that PYTHONPATH: what the loaned GPU machine has (torch,
torchvision, numpy, pandas, pyarrow, matplotlib, scipy, pyyaml, tqdm, tensorboard, jinja2,
tabulate; no snakemake, no jsonschema). tests/test_benchmarks.py runs the GPU check under it."""

import sys

BLOCKED = ("snakemake", "jsonschema")


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {name!r} (blocked by {__file__})", name=name
            )
        return None


sys.meta_path.insert(0, _Blocked())
