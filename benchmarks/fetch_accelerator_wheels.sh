#!/usr/bin/env bash
# Downloads the wheels that benchmarks/accelerator_check.sh installs on an accelerator
# machine without network access (Python 3.12, manylinux x86_64).
#
#   benchmarks/fetch_accelerator_wheels.sh [DIR]     # default: accelerator_wheels/ (ignored)
#
# That machine has JAX, flax, optax, orbax, chex, PyTorch and torchvision, but not the
# data stack of spectral_jax: tensorflow-datasets (imported by spectral_jax.data, which
# the trainer imports), array_record (TFDS's file format), grain (worker_count > 0) and
# ml_collections (the configs). Every wheel is fetched with --no-deps at the version the
# test suite runs with here, so the list below names each runtime dependency that such
# a machine may lack; the versions pin one set that is known to work together. The
# packages it already has (absl-py, numpy, attrs, six, wrapt, tqdm, psutil, pyarrow,
# requests, cloudpickle, PyYAML, fsspec, zipp, typing-extensions) are not fetched.
#
# PYTHON_VERSION and PLATFORMS select another target; PIP names the pip to run.
set -euo pipefail

dir="${1:-accelerator_wheels}"
pip="${PIP:-python3 -m pip}"
python_version="${PYTHON_VERSION:-3.12}"
platforms="${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64}"

# name==version, one per line: the data stack and its runtime dependencies.
requirements=(
  # What spectral_jax imports.
  tensorflow-datasets==4.9.10
  array_record==0.8.6
  grain==0.2.18
  ml_collections==1.1.0
  # tensorflow-datasets' dependencies that such a machine may lack.
  dm-tree==0.1.10
  etils==1.15.0
  immutabledict==4.3.1
  importlib_resources==7.1.0
  simple-parsing==0.1.9
  docstring_parser==0.18.0
  tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0
  protobuf==7.36.2
  termcolor==3.3.0
  toml==0.10.2
  # grain's.
  portpicker==1.6.0
)
# Only a source distribution on PyPI (pure Python): built into a wheel here.
source_only=(promise==2.3)

mkdir -p "$dir"
platform_args=()
for platform in $platforms; do platform_args+=(--platform "$platform"); done
$pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version "$python_version" "${platform_args[@]}" -d "$dir" "${requirements[@]}"
$pip wheel --quiet --no-deps --no-binary=:all: -w "$dir" "${source_only[@]}"

count=$(find "$dir" -maxdepth 1 -name '*.whl' | wc -l)
size=$(du -sh "$dir" | cut -f1)
echo "$count wheels in $dir ($size):"
ls -1 "$dir"
