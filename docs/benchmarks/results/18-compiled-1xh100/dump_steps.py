import sys, h5py, numpy as np
for path in sys.argv[1:]:
    f = h5py.File(path)
    s = f['steps'][...]
    print(path, s.dtype.names)
    g = f['gpu_steps'][...]
    print('gpu', g.dtype.names if g.dtype.names else g.dtype, len(g))
    for row in g[:14]:
        print(row)
