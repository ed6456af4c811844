# Sourced by scripts/*: installs Debian packages when they are missing and we may.
#   need_package PKG TEST...   queues PKG unless the command TEST... succeeds
#   install_needed             installs what was queued (as root, with apt-get), or fails
# PostgreSQL's server is installed without a cluster of its own: tollgate's scripts and
# tests start theirs, in temporary directories on free ports.

needed=()

need_package() {
  local package=$1
  shift
  "$@" >/dev/null 2>&1 || needed+=("$package")
}

can_install() { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; }

install_needed() {
  [ ${#needed[@]} -gt 0 ] || return 0
  if ! can_install; then
    echo "$(basename "$0"): please install ${needed[*]} (Debian package names)" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Servers installed here must not start as system services (the scripts and tests start
  # their own): Debian asks policy-rc.d, and 101 means "not now". Only if none is set.
  local policy=/usr/sbin/policy-rc.d ours=false status=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=true
  fi
  apt_install_needed || status=$?
  if $ours; then rm -f "$policy"; fi
  needed=()
  return $status
}

apt_install_needed() {
  apt-get update -qq || return
  if [[ " ${needed[*]} " == *" postgresql "* ]]; then
    # As PostgreSQL's Docker images do: postgresql-common first, told to make no cluster.
    apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null || return
    sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' \
      /etc/postgresql-common/createcluster.conf || return
  fi
  apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
}

has_postgres_server() { compgen -G '/usr/lib/postgresql/*/bin/initdb'; }
has_commands() { local c; for c in "$@"; do command -v "$c" || return 1; done; }
has_nginx() { [ -x /usr/sbin/nginx ] || command -v nginx; }

# nginx (the benchmark's baseline, the local cluster's load balancer), if it can be had:
# returns non-zero when it is still missing.
install_nginx_if_possible() {
  has_nginx >/dev/null 2>&1 && return 0
  can_install || return 1
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 ||
    apt-get install -y -qq --no-install-recommends nginx >/dev/null 2>&1
}
