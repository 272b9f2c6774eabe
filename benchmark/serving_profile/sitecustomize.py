"""Host sampling inside the servers of ``benchmark/serving_wall_time.py --host-profile`` (benchmark tool only).

Python imports ``sitecustomize`` at start-up in every process whose path holds this folder, so the
api_server and any engine process it spawns sample themselves. Nothing happens unless
``$FOCUS_HOST_SAMPLE_DIR`` is set. A watcher thread then samples the process's main thread (where
the engine loop and the HTTP handlers run) with ``host_profile.StackSampler`` while the file
``$FOCUS_HOST_SAMPLE_DIR/on`` exists (the wall-time tool creates it around each timed load only, so
start-up and idle time are not counted), and writes ``prof_<pid>.json`` (one report per window) each
time a window closes.
"""
import os

_DIR = os.environ.get('FOCUS_HOST_SAMPLE_DIR')

if _DIR:
    import json
    import sys
    import threading

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from host_profile import StackSampler  # noqa: E402
    sys.path.pop(0)

    def _watch(main_ident: int, interval_s: float = 0.002) -> None:
        flag, windows, sampler = os.path.join(_DIR, 'on'), [], None
        out = os.path.join(_DIR, f'prof_{os.getpid()}.json')
        while True:
            on = os.path.exists(flag)
            if on and sampler is None:
                sampler = StackSampler(main_ident, interval_s).__enter__()
            elif not on and sampler is not None:
                sampler.__exit__(None, None, None)
                windows.append(sampler.report())
                sampler = None
                with open(out, 'w') as f:
                    json.dump(dict(argv=sys.argv, windows=windows), f)
            threading.Event().wait(0.05)

    threading.Thread(target=_watch, args=(threading.main_thread().ident, ), daemon=True,
                     name='focus-host-sampler').start()
