#!/bin/bash
# The "Complete Workflow Example" from the Python server's README, kept as it was (same curl calls,
# jq paths and messages) so that the clients written after it are known to work unchanged.
# Parameters, from the environment:
#   SERVER   the server's URL                          (default http://localhost:8000)
#   GDS      the layout file to upload                 (default chip_top.gds)
#   TOP      its top cell                              (default chip_top)
#   WORKDIR  where output.gds or debug.tar.gz go       (default the current folder)
# Exits 0 whether the precheck passed or failed, as the original does.
set -euo pipefail

SERVER="${SERVER:-http://localhost:8000}"
GDS="${GDS:-chip_top.gds}"
TOP="${TOP:-chip_top}"
WORKDIR="${WORKDIR:-.}"

case "$GDS" in
/*) ;;
*) GDS="$PWD/$GDS" ;;
esac
cd "$WORKDIR"

# 1. Upload the GDS file
echo "Uploading layout..."
UPLOAD=$(curl -s -X POST "$SERVER/api/v1/uploads" -F "file=@$GDS")
UPLOAD_ID=$(echo "$UPLOAD" | jq -r '.Id')
echo "Upload ID: $UPLOAD_ID"

# 2. Create a precheck run
echo "Creating precheck run..."
RUN=$(curl -s -X POST "$SERVER/api/v1/prechecks" \
  -H "Content-Type: application/json" \
  -d "{\"upload_id\": \"$UPLOAD_ID\", \"top_cell\": \"$TOP\", \"die_id\": \"TEST0001\"}")
RUN_ID=$(echo "$RUN" | jq -r '.Id')
echo "Run ID: $RUN_ID"

# 3. Wait for completion (or poll status)
echo "Waiting for completion..."
RESULT=$(curl -s -X POST "$SERVER/api/v1/prechecks/$RUN_ID/wait?timeout=600")
EXIT_CODE=$(echo "$RESULT" | jq -r '.StatusCode')

if [ "$EXIT_CODE" = "0" ]; then
  echo "Precheck passed!"

  # 4. Download output
  echo "Downloading output..."
  curl -s -o output.gds "$SERVER/api/v1/prechecks/$RUN_ID/output"
  echo "Output saved to output.gds"
else
  echo "Precheck failed with exit code: $EXIT_CODE"

  # Download debug tarball for investigation
  curl -s -o debug.tar.gz "$SERVER/api/v1/debug/prechecks/$RUN_ID"
  echo "Debug tarball saved to debug.tar.gz"
fi
