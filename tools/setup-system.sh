#!/usr/bin/env bash
# System packages the tests use (Debian): headless Chromium for the report's browser test (and
# poppler-utils' pdftoppm, which renders the printed lot page), and a
# single-node SLURM for the cluster test, and R with the packages the campaign tests compare against
# (tests/test_campaign_r.py: emmeans, lme4, pbkrtest, metafor, multcomp). Idempotent; installs only what is missing and only as root.
# Without root or apt the packages are not installed and the tests that need them are skipped
# with the reason.
set -u
want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
command -v pdftoppm >/dev/null 2>&1 || want+=(poppler-utils)
command -v slurmctld >/dev/null 2>&1 || want+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || want+=(slurmd)
command -v sinfo >/dev/null 2>&1 || want+=(slurm-client)
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || want+=(munge)
command -v Rscript >/dev/null 2>&1 || want+=(r-base-core)
for pkg in r-cran-emmeans r-cran-lme4 r-cran-pbkrtest r-cran-metafor r-cran-multcomp; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || want+=("$pkg")
done
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-system: not root or no apt-get; not installing: ${want[*]} (tests needing them will be skipped)" >&2
  exit 0
fi
echo "setup-system: installing ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null 2>&1 \
  || echo "setup-system: apt-get install ${want[*]} failed (tests needing them will be skipped)" >&2
exit 0
