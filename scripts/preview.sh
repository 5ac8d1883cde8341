#!/usr/bin/env bash
# The README's animated preview: a finished job's film beside its input, as an animated WebP
# that a browser plays in the page (12 frames a second, the last held 2 s, about 165 kB for
# the quickstart), made with the ffmpeg that imageio-ffmpeg ships.
#   bash scripts/quickstart.sh && bash scripts/preview.sh runs/quickstart examples/pattern.png docs/quickstart.webp
set -euo pipefail
output=${1:?usage: preview.sh OUTPUT INPUT_IMAGE OUT.webp}
input=${2:?usage: preview.sh OUTPUT INPUT_IMAGE OUT.webp}
webp=${3:?usage: preview.sh OUTPUT INPUT_IMAGE OUT.webp}
ffmpeg=$(python3 -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())")
"$ffmpeg" -v error -y -i "$output/video.mp4" -loop 1 -i "$input" -filter_complex \
    "[0:v]fps=12,format=rgb24,tpad=stop_mode=clone:stop_duration=2[film];[1:v]fps=12,format=rgb24[input];[film][input]hstack=inputs=2:shortest=1" \
    -c:v libwebp_anim -lossless 0 -q:v 65 -compression_level 6 -loop 0 -an "$webp"
ls -l "$webp"
