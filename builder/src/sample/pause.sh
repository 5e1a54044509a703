#!/bin/sh
# edgeferry SAMPLE stand-in for @REFERENCE@ — not the real pause
exec /bin/busybox sleep 2147483647
