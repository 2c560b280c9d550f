#!/usr/bin/env bash
# Installs moto's S3 server (an S3 implementation for tests: path-style requests, conditional
# puts with If-None-Match) from PyPI into server/.venv-moto (git-ignored) and prints the path of
# its moto_server executable on stdout (nothing else goes to stdout). tests/s3_repository.rs
# serves and publishes a model repository in it through the real S3 client.
#
# Exit status: 0 ok; 3 python3, its venv module or pip is missing (the test then skips, saying
# why, or fails where it is required: see nereid-testkit); anything else is a real failure (for
# example no network), which fails the test.
#
# `pip install moto[server]` pulls in every service's dependencies (about 320 MB: docker,
# cfn-lint, aws-xray-sdk, ...). Here moto is installed with only what its S3 backend and the
# Flask server import, all pinned exactly and installed with --no-deps (no resolver runs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../testkit/python-venv.sh"

PACKAGE="moto==5.2.6"
DEPS=(
    "boto3==1.44.18" "botocore==1.44.18" "s3transfer==0.19.3" "jmespath==1.1.0"
    "python-dateutil==2.9.0.post0" "six==1.17.0" "urllib3==2.8.0"
    "cryptography==51.0.1" "cffi==2.1.1" "pycparser==3.12"
    "requests==2.34.2" "charset-normalizer==3.5.3" "idna==3.21" "certifi==2026.10.19.post1"
    "responses==0.26.3" "xmltodict==1.0.4" "PyYAML==6.0.4" "py-partiql-parser==0.6.3"
    "Werkzeug==3.1.9" "MarkupSafe==3.0.4" "Flask==3.1.3" "flask-cors==6.0.5"
    "Jinja2==3.1.6" "itsdangerous==2.2.0" "click==8.5.1" "blinker==1.9.0"
)

server_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${NEREID_MOTO_VENV:-$server_dir/.venv-moto}"
install_pinned "$venv" "3.9" "moto 5" "$PACKAGE" "${DEPS[@]}"
echo "$venv/bin/moto_server"
