# Sourced (from the repo root) by the scripts that run on the device machine: installs the wheels its image lacks
# (diffusers, omegaconf; carried as .whl/, fetched by ../shared/tools/gpu-wheels.sh) once into /tmp/site, which a
# warm machine keeps between calls, and puts them and the repo on PYTHONPATH.
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
