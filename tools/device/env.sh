# Source on the project's lent GPU machines (see docs/BENCHMARKS.md): unpacks the CUDA-aware
# Open MPI carried in .device/ and installs the carried diffusers wheel, then exports the
# variables mpirun and the ranks need. Usage: source tools/device/env.sh
set -e
if [ ! -x /opt/ompi-cuda/bin/mpirun ]; then
    tar xJf .device/ompi-cuda-4.1.4.tar.xz -C /opt
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .device/*.whl
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PATH=/opt/ompi-cuda/bin:$PATH LD_LIBRARY_PATH=/opt/ompi-cuda/lib
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
MPIRUN_GPU=(mpirun --bind-to none --mca pml ob1 --mca btl self,smcuda,vader
            -x PATH -x LD_LIBRARY_PATH -x PYTHONPATH -x PYTHONUNBUFFERED)
export MPIRUN_GPU_STR="${MPIRUN_GPU[*]}"
set +e
