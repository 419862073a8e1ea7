#!/usr/bin/env bash
# Upstream's path (examples/video_gen/minisora/build.sh) kept for the seed README's commands.
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/build.sh" "$@"
