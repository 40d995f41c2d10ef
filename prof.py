import os, sys, cProfile, pstats, time
os.environ["STPIPE_DISABLE_CRDS_STEPPARS"]="true"
from jwst_skymatch_plus import PixelSkyMatchStep
import logging
mode = sys.argv[1]
kw = {"serial": {}, "disk": {"in_memory": False}, "w2": {"n_workers": 2}, "w2disk": {"n_workers": 2, "in_memory": False}}[mode]
t0=time.perf_counter()
pr = cProfile.Profile(); pr.enable()
res = PixelSkyMatchStep.call("/tmp/prof/n48/bench_asn.json", **kw)
pr.disable()
print("WALL", mode, time.perf_counter()-t0)
st = pstats.Stats(pr); st.sort_stats("cumulative").print_stats(35)
