"""Quality: sample metrics (FID/FD, toy accuracy) and the scale x depth sensitivity matrix."""
