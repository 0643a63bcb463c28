#!/usr/bin/env bash
# Captures what the Prisma app really sends to PostgreSQL (CAPTURED.md was made with it): tests/clients/capture.sh
# with schema.sql and one run of app.mjs against the server directly (no pgtenant); prints every distinct
# statement (Q = simple Query, P = Parse), then the ones naming `public`, a catalog or a setting.
#
#   bash tests/clients/prisma/capture.sh [port]      (needs `npm ci` and generate.sh run in this folder)
set -euo pipefail
cd "$(dirname "$0")"
CAPTURE_PORT=${1:-5499} exec bash ../capture.sh schema.sql \
  node app.mjs 'postgresql://postgres@127.0.0.1:{port}/capture?sslmode=disable' capture
