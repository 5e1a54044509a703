#!/bin/sh
# edgeferry SAMPLE stand-in for @REFERENCE@ — not the real image
echo 'edgeferry SAMPLE stand-in for @REFERENCE@: nothing to run'
