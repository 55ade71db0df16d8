#!/usr/bin/env bash
# Build a CUDA-aware Open MPI from source, for clusters whose MPI is not CUDA-aware.
# Run `tools/build_cuda_mpi.sh --help` for the options; docs/CUDA_AWARE_MPI.md for when you
# need it and how to use the result with pcpp-mpi.
set -euo pipefail

PROG=build_cuda_mpi.sh

usage() {
	cat <<'EOF'
Usage: tools/build_cuda_mpi.sh (--source TARBALL | --version X.Y.Z) [options] [-- CONFIGURE_ARGS...]

Builds Open MPI with CUDA support (--with-cuda, shared-memory CUDA transport smcuda) out of
tree in a temporary directory, installs it to --prefix, and checks with ompi_info that the
result is CUDA-aware. Every check on the inputs runs before the (long) build.

Source (one of):
  --source TARBALL   an Open MPI release tarball (openmpi-X.Y.Z.tar.gz/.bz2/.xz from
                     https://www.open-mpi.org/software/ompi/, or Debian's
                     openmpi_X.Y.Z.orig.tar.xz), or an unpacked source directory
  --version X.Y.Z    download openmpi-X.Y.Z.tar.bz2 from download.open-mpi.org with curl
                     (needs internet access); 4.1.x is the tested series

Options:
  --prefix DIR       install directory (default: $HOME/opt/ompi-cuda); must not exist or be
                     empty: an earlier install is never overwritten
  --cuda DIR         CUDA toolkit (default: $CUDA_HOME, else /usr/local/cuda); needs
                     DIR/include/cuda.h. No GPU is needed to build (a login node will do).
  --jobs N           parallel make jobs (default: nproc)
  --with-ucx DIR     build the UCX transport from DIR (for runs across nodes); default is
                     --without-ucx, as in the recipe tested on one node
  --with-pmix DIR    use the external PMIx in DIR (the one your Slurm was built with), so that
                     `srun --mpi=pmix` can start the ranks; adds --with-libevent=external
                     (Open MPI 4.x requires it with an external PMIx) unless you pass your own
                     --with-libevent=... after --
  --with-slurm       force Slurm support (configure's --with-slurm; default is auto-detect)
  --without-cuda     TESTING ONLY: build without CUDA to check the build plumbing on a
                     machine without a CUDA toolkit. The result is NOT CUDA-aware.
  --keep-build       keep the temporary build directory (it is always kept on failure)
  -h, --help         this text
  -- ARGS...         everything after -- goes to Open MPI's configure unchanged

Environment: TMPDIR (where the build directory goes; needs about 1 GB), CC (default gcc).

Example:
  tools/build_cuda_mpi.sh --source ~/Downloads/openmpi-4.1.6.tar.bz2 --cuda "$CUDA_HOME"
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 2
}
loud() {
	local line
	line=$(printf '%0.s!' {1..78})
	printf '%s\n' "$line" >&2
	for msg in "$@"; do printf '!!! %s\n' "$msg" >&2; done
	printf '%s\n' "$line" >&2
}
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }

# The rest is one function, called on the last line: bash then reads the whole file before it
# runs anything, so the file can change (an update, a checkout) during a build without harm.
main() {

# ---- options ----------------------------------------------------------------------------------
prefix="${HOME:-}/opt/ompi-cuda"
cuda="${CUDA_HOME:-/usr/local/cuda}"
source_arg=""
version=""
jobs=""
ucx=""
pmix=""
with_slurm=0
with_cuda=1
keep_build=0
extra_args=()

while [[ $# -gt 0 ]]; do
	case "$1" in
	-h | --help)
		usage
		exit 0
		;;
	--prefix | --cuda | --source | --version | --jobs | --with-ucx | --with-pmix)
		need_value "$@"
		case "$1" in
		--prefix) prefix=$2 ;;
		--cuda) cuda=$2 ;;
		--source) source_arg=$2 ;;
		--version) version=$2 ;;
		--jobs) jobs=$2 ;;
		--with-ucx) ucx=$2 ;;
		--with-pmix) pmix=$2 ;;
		esac
		shift 2
		;;
	--prefix=* | --cuda=* | --source=* | --version=* | --jobs=* | --with-ucx=* | --with-pmix=*)
		# accept --opt=VALUE too
		set -- "${1%%=*}" "${1#*=}" "${@:2}"
		;;
	--with-slurm)
		with_slurm=1
		shift
		;;
	--without-cuda)
		with_cuda=0
		shift
		;;
	--keep-build)
		keep_build=1
		shift
		;;
	--)
		shift
		extra_args=("$@")
		break
		;;
	*) die "unknown option '$1' (see --help; configure options go after --)" ;;
	esac
done

# ---- checks (cheap, before any download or build) ----------------------------------------------
[[ -n $source_arg || -n $version ]] ||
	die "no Open MPI source: give --source TARBALL (downloaded from https://www.open-mpi.org/software/ompi/) or --version X.Y.Z to download it"
[[ -z $source_arg || -z $version ]] || die "give either --source or --version, not both"
if [[ -n $version && ! $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
	die "--version must look like 4.1.6, not '$version'"
fi

if [[ -z $jobs ]]; then
	jobs=$(nproc 2>/dev/null || echo 4)
fi
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer, not '$jobs'"

# Prefix: absolute, not an existing non-empty directory, and creatable.
[[ -n $prefix ]] || die "--prefix is empty (and \$HOME is not set for the default)"
[[ $prefix == /* ]] || prefix="$PWD/$prefix"
prefix=${prefix%/}
if [[ -e $prefix && ! -d $prefix ]]; then
	die "prefix $prefix exists and is not a directory; choose another, e.g. --prefix ${prefix}-2"
fi
if [[ -d $prefix ]] && [[ -n $(ls -A "$prefix") ]]; then
	die "prefix $prefix already exists and is not empty (an earlier install?); it is never overwritten: choose another, e.g. --prefix ${prefix}-$(date +%Y%m%d), or remove it yourself"
fi
ancestor=$prefix
while [[ ! -e $ancestor ]]; do ancestor=$(dirname "$ancestor"); done
[[ -d $ancestor && -w $ancestor ]] ||
	die "cannot create prefix $prefix: $ancestor is not a writable directory; choose a prefix you can write to (e.g. under \$HOME)"

# CUDA toolkit.
if [[ $with_cuda -eq 1 ]]; then
	[[ -d $cuda ]] ||
		die "CUDA directory $cuda does not exist; point --cuda (or CUDA_HOME) at the CUDA toolkit (e.g. after 'module load cuda': --cuda \"\$CUDA_HOME\"). Use --without-cuda only to test the build plumbing."
	[[ -f $cuda/include/cuda.h ]] ||
		die "CUDA directory $cuda has no include/cuda.h: it is not a CUDA toolkit (or lacks the development headers); point --cuda (or CUDA_HOME) at the toolkit root"
	cuda=$(cd "$cuda" && pwd)
fi

# Optional external libraries.
if [[ -n $ucx ]]; then
	[[ -f $ucx/include/ucp/api/ucp.h ]] ||
		die "--with-ucx $ucx: no include/ucp/api/ucp.h there; give the UCX install root"
fi
if [[ -n $pmix ]]; then
	[[ -f $pmix/include/pmix.h ]] ||
		die "--with-pmix $pmix: no include/pmix.h there; give the PMIx install root your Slurm uses (often /usr or /opt/pmix/VERSION)"
fi

# Tools.
cc=${CC:-gcc}
command -v "$cc" >/dev/null || die "C compiler '$cc' not found; install gcc (e.g. apt-get install build-essential) or load a compiler module"
command -v make >/dev/null || die "make not found; install make (e.g. apt-get install build-essential)"
command -v tar >/dev/null || die "tar not found"
if ! command -v "${CXX:-g++}" >/dev/null; then
	say "warning: no C++ compiler (${CXX:-g++}); mpicxx will not work (pcpp-mpi does not need it)"
fi
if [[ -n $version ]]; then
	command -v curl >/dev/null || die "curl not found, so --version cannot download; download the tarball yourself and pass --source"
fi

# Local source: must exist and be readable before we create anything.
src_kind=""
if [[ -n $source_arg ]]; then
	if [[ -d $source_arg ]]; then
		[[ -x $source_arg/configure ]] ||
			die "source directory $source_arg has no executable 'configure'; give an Open MPI release tarball or its unpacked directory (a git clone needs autogen.pl first)"
		src_kind=dir
		source_arg=$(cd "$source_arg" && pwd -P)
	elif [[ -f $source_arg ]]; then
		[[ -r $source_arg ]] || die "source tarball $source_arg is not readable"
		src_kind=tar
		source_arg=$(cd "$(dirname "$source_arg")" && pwd -P)/$(basename "$source_arg")
	else
		die "source tarball $source_arg does not exist; download openmpi-X.Y.Z.tar.bz2 from https://www.open-mpi.org/software/ompi/ (or use --version X.Y.Z when online)"
	fi
fi

# ---- work directory ---------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/build-ompi.XXXXXX")
finished=0
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
	local logs=("$work"/*.log)
	if [[ ! -e ${logs[0]} ]] || [[ $finished -eq 1 && $keep_build -eq 0 ]]; then
		rm -rf "$work" # nothing was built yet, or all went well
	else
		say "build directory kept: $work (logs: $work/*.log)"
	fi
}
trap cleanup EXIT
t_start=$SECONDS

# elapsed SINCE: seconds since SINCE, as "N s"
elapsed() { printf '%d s' $((SECONDS - $1)); }

# run_logged NAME CMD...: run CMD with its output in $work/NAME.log; on failure show its tail.
run_logged() {
	local name=$1 log="$work/$1.log" t0=$SECONDS
	shift
	say "$name: running (log: $log)"
	if ! "$@" >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		die "$name failed after $(elapsed "$t0"); the last lines of $log are above"
	fi
	say "$name: done in $(elapsed "$t0")"
}

if [[ -n $version ]]; then
	series=${version%.*}
	url="https://download.open-mpi.org/release/open-mpi/v${series}/openmpi-${version}.tar.bz2"
	source_arg="$work/openmpi-${version}.tar.bz2"
	src_kind=tar
	say "downloading $url"
	curl -fL --retry 2 --connect-timeout 20 -o "$source_arg" "$url" ||
		die "could not download $url (offline, or no such version?); download the tarball yourself and pass --source"
fi

if [[ $src_kind == tar ]]; then
	# The top directory holding `configure` (openmpi-X.Y.Z/ for upstream and Debian tarballs).
	listing=$(tar -tf "$source_arg" 2>&1) ||
		die "cannot read $source_arg as a tarball: $(printf '%s\n' "$listing" | tail -n 2 | tr '\n' ' ')"
	top=$(printf '%s\n' "$listing" | sed -n 's#^\(\./\)\{0,1\}\([^/]*\)/configure$#\2#p' | head -n 1)
	[[ -n $top ]] || die "$source_arg has no <dir>/configure at its top level; is it an Open MPI release tarball?"
	mkdir -p "$work/src"
	t0=$SECONDS
	tar -xf "$source_arg" -C "$work/src" || die "unpacking $source_arg failed"
	srcdir="$work/src/$top"
	say "unpacked $(basename "$source_arg") in $(elapsed "$t0")"
else
	srcdir=$source_arg
fi

[[ -f $srcdir/VERSION ]] || die "$srcdir has no VERSION file; is it an Open MPI source tree?"
version_field() { sed -n "s/^$1=\([0-9]*\).*/\1/p" "$srcdir/VERSION" | head -n 1; }
ompi_version="$(version_field major).$(version_field minor).$(version_field release)"
ompi_major=${ompi_version%%.*}
say "Open MPI $ompi_version from $srcdir"
if [[ $ompi_major != 4 ]]; then
	say "warning: only Open MPI 4.1.x was tested with this script and with pcpp-mpi"
fi

# ---- configure --------------------------------------------------------------------------------
conf=(--prefix="$prefix" --disable-mpi-fortran --disable-oshmem --disable-mpi-java)
if [[ $with_cuda -eq 1 ]]; then
	conf+=(--with-cuda="$cuda")
	if [[ $ompi_major -ge 5 ]]; then
		# Open MPI 5 links libcuda at build time; a login node without a driver has the stub.
		libcuda=$(find -L "$cuda" -name libcuda.so 2>/dev/null | sort | head -n 1 || true)
		if [[ -n $libcuda ]]; then
			conf+=(--with-cuda-libdir="$(dirname "$libcuda")")
		fi
	fi
else
	conf+=(--without-cuda)
fi
if [[ -n $ucx ]]; then
	conf+=(--with-ucx="$ucx")
else
	conf+=(--without-ucx)
fi
if [[ -n $pmix ]]; then
	conf+=(--with-pmix="$pmix")
	if [[ " ${extra_args[*]} " != *" --with-libevent"* ]]; then
		conf+=(--with-libevent=external)
	fi
fi
if [[ $with_slurm -eq 1 ]]; then
	conf+=(--with-slurm)
fi
conf+=("${extra_args[@]}")

if [[ $with_cuda -eq 0 ]]; then
	loud "--without-cuda: building WITHOUT CUDA support, to test the build plumbing only." \
		"The result is NOT CUDA-aware; do not use it for GPU runs."
fi

mkdir -p "$work/build"
cd "$work/build"
say "configure ${conf[*]}"
run_logged configure env CC="$cc" "$srcdir/configure" "${conf[@]}"
run_logged make make -j"$jobs"
run_logged install make install

# ---- verify -----------------------------------------------------------------------------------
export PATH="$prefix/bin:$PATH"
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[[ -x $prefix/bin/ompi_info && -x $prefix/bin/mpirun ]] || die "install left no $prefix/bin/ompi_info or mpirun"
built_with=$("$prefix/bin/ompi_info" --parsable --all | grep 'mpi_built_with_cuda_support:value' || true)
say "ompi_info: ${built_with:-<no mpi_built_with_cuda_support line>}"
if [[ $with_cuda -eq 1 ]]; then
	[[ $built_with == *:true ]] ||
		die "the installed Open MPI in $prefix is NOT CUDA-aware (ompi_info: '${built_with}'); see $work/configure.log (search for cuda)"
elif [[ $built_with == *:true ]]; then
	die "--without-cuda but ompi_info reports CUDA support: '$built_with'"
fi

# Smoke test: compile with mpicc and run 2 ranks on this machine (warnings only: a login node may
# forbid it, and the install itself is already complete).
cat >"$work/hello.c" <<'EOF'
#include <mpi.h>
#include <stdio.h>
#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h>
#endif
int main(int argc, char **argv) {
    int rank, size, cuda = -1;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
#if defined(MPIX_CUDA_AWARE_SUPPORT)
    cuda = MPIX_Query_cuda_support();
#endif
    int token = rank, sum = 0;
    MPI_Allreduce(&token, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("ranks %d, sum %d, MPIX_Query_cuda_support %d\n", size, sum, cuda);
    MPI_Finalize();
    return sum == size * (size - 1) / 2 ? 0 : 1;
}
EOF
smoke_ok=0
if "$prefix/bin/mpicc" -o "$work/hello" "$work/hello.c" >"$work/smoke.log" 2>&1; then
	root_env=()
	if [[ $(id -u) -eq 0 ]]; then
		root_env=(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
	fi
	btl=self,vader
	if [[ $with_cuda -eq 1 ]]; then btl=self,smcuda,vader; fi
	if env "${root_env[@]}" timeout 120 "$prefix/bin/mpirun" -np 2 --oversubscribe --bind-to none \
		--mca pml ob1 --mca btl "$btl" "$work/hello" >>"$work/smoke.log" 2>&1; then
		smoke_ok=1
		say "smoke test: mpicc + mpirun -np 2: $(grep '^ranks' "$work/smoke.log" || true)"
		if grep -q 'CUDA-aware support is disabled' "$work/smoke.log"; then
			say "note: no libcuda.so.1 on this machine (no NVIDIA driver), so CUDA support stayed off" \
				"in the smoke test; expected on a login node. Check with 'pcpp-mpi info' on a GPU node."
		fi
	fi
fi
if [[ $smoke_ok -eq 0 ]]; then
	tail -n 20 "$work/smoke.log" >&2 || true
	say "warning: the smoke test (mpicc + mpirun -np 2 on this machine) failed; log $work/smoke.log." \
		"The install is complete; try 'pcpp-mpi info' on a compute node."
	keep_build=1
fi
finished=1

# ---- how to use it ----------------------------------------------------------------------------
cat <<EOF

Open MPI $ompi_version installed in $prefix ($(elapsed "$t_start") in all).
${built_with}

Add to your job script (or shell), before mpi4py is imported:

    export PATH=$prefix/bin:\$PATH
    export LD_LIBRARY_PATH=$prefix/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}

Rebuild mpi4py against it, in the virtualenv that holds pcpp-mpi:

    MPICC=$prefix/bin/mpicc pip install --no-binary=mpi4py --no-cache-dir --force-reinstall mpi4py

Launch on one node with the shared-memory CUDA transport:

    mpirun -np 2 --bind-to none --mca pml ob1 --mca btl self,smcuda,vader \\
        -x PATH -x LD_LIBRARY_PATH pcpp-mpi run JOB.yaml --out DIR

Check (on a GPU node) that pcpp-mpi sees it:

    mpirun -np 2 --mca pml ob1 --mca btl self,smcuda,vader -x PATH -x LD_LIBRARY_PATH pcpp-mpi info
    # expect:  MPI library:   Open MPI v$ompi_version ...   and   CUDA-aware:    yes [...]
EOF
if [[ -z $pmix ]]; then
	cat <<EOF

Slurm: inside an allocation launch with mpirun (PCPP_LAUNCHER=mpirun for slurm/*.sbatch);
srun --mpi=pmix needs a build against your Slurm's PMIx (--with-pmix DIR, see --help).
EOF
else
	cat <<EOF

Slurm: built against the PMIx in $pmix; launch with srun --mpi=pmix (slurm/*.sbatch default).
EOF
fi
if [[ $with_cuda -eq 0 ]]; then
	loud "Built with --without-cuda: this Open MPI is NOT CUDA-aware (${built_with})." \
		"It only shows that the build plumbing works; rebuild without --without-cuda for GPUs."
fi

}

main "$@"; exit
