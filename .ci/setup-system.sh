#!/usr/bin/env bash
# System packages the tests use (Debian). Idempotent: installs only what is missing.
set -euo pipefail
PACKAGES=(
  wordnet-base  # WordNet 3.0 for the text_based baseline
  chromium      # headless browser for the leaderboard HTML test
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
