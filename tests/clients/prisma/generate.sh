#!/usr/bin/env bash
# Writes the Prisma client for schema.prisma to generated/client (git-ignored), with no network access:
# - the Prisma CLI insists on a schema-engine binary before `generate` (it would download it), although
#   generating the client never runs it: PRISMA_SCHEMA_ENGINE_BINARY names a stand-in that only fails;
# - CHECKPOINT_DISABLE=1 turns off the CLI's update check (an HTTP request).
# The client needs no engine at run time either: Prisma 7 compiles queries in Wasm, and app.mjs runs them
# through @prisma/adapter-pg (node-postgres).
# Run by .ci/run after `npm ci`, and by tests/orm_prisma.rs when generated/client is missing or stale.
set -euo pipefail
cd "$(dirname "$0")"
export PRISMA_SCHEMA_ENGINE_BINARY="$PWD/no-schema-engine"
export CHECKPOINT_DISABLE=1 PRISMA_HIDE_UPDATE_MESSAGE=1
node node_modules/prisma/build/index.js generate --schema schema.prisma
# What it was generated from (Prisma writes a reformatted copy of the schema): tests/orm_prisma.rs regenerates
# when schema.prisma differs from this or the installed @prisma/client is another version.
cp schema.prisma generated/client/.generated-from.prisma
