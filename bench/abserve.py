"""uvicorn for one side of bench/ab.py, serving a checkout of a git ref, and saying which code it served.

    .venv/bin/python bench/abserve.py CHECKOUT UVICORN_ARGS...

bench/ab.py starts it with the checkout as working directory and PYTHONPATH. Run by path, Python puts
this file's folder (the current checkout's bench/) first on sys.path; that entry becomes CHECKOUT here,
so `config`, `pool`, `bench.settings`, ... are the checkout's. The editable install of the current
checkout stays in site-packages, but setuptools' editable finder is appended to sys.meta_path, after
the path finder, so it only answers for a package the checkout does not have, and the census below
would name such a module.

The census: once uvicorn has imported the app, and again when the server has stopped (every module the
run imported, lazy ones included), one line `abserve <when>: ...` in the server's log lists the
project's modules that were NOT loaded from CHECKOUT (`outside: none` when all were) and where
`config.asgi` and the `pool` package came from. bench/ab.py refuses a side whose lines say otherwise.
Standard library only before uvicorn runs: nothing of the current checkout is imported.
"""

import os
import sys

PROJECT = ("config", "accounts", "billing", "exchange", "keys", "payouts", "pool", "bench", "tests")


def census(root: str, when: str) -> None:
    def where(module) -> str | None:
        path = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or []), None)
        return os.path.realpath(path) if path else None

    project = {name: where(module) for name, module in list(sys.modules.items())
               if name.split(".")[0] in PROJECT}
    outside = sorted(f"{name}={path}" for name, path in project.items()
                     if path is None or not path.startswith(root + os.sep))
    named = {name: project.get(name) for name in ("config.asgi", "pool")}
    print(f"abserve {when}: {len(project)} project modules, outside {root}: {', '.join(outside) or 'none'}; "
          + "; ".join(f"{name} from {path}" for name, path in named.items()), flush=True)


def main() -> None:
    root, app_name = os.path.realpath(sys.argv[1]), sys.argv[2]
    sys.path[0] = root
    sys.argv = ["uvicorn", *sys.argv[2:]]

    import uvicorn
    import uvicorn.config

    load = uvicorn.config.import_from_string

    reported = []

    def load_and_report(name):  # uvicorn's own import of the app, then the first census
        loaded = load(name)
        if name == app_name and not reported:
            reported.append(name)
            census(root, "loaded")
        return loaded

    uvicorn.config.import_from_string = load_and_report
    try:
        uvicorn.main()
    finally:
        census(root, "stopped")


if __name__ == "__main__":
    main()
