#!/usr/bin/env bash
# Installs the Debian packages hivla needs, only where they are missing.
set -euo pipefail
need=()
have_lib() { ldconfig -p 2>/dev/null | grep -q "$1"; }
have_lib 'libEGL.so.1'      || need+=(libegl1)
have_lib 'libEGL_mesa.so.0' || need+=(libegl-mesa0)
have_lib 'libOSMesa.so'     || need+=(libosmesa6)
have_lib 'libGL.so.1'       || need+=(libgl1)
command -v tmux >/dev/null  || need+=(tmux)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
