"""Who is in view, since when, and how many: tracks, events and counts per camera.

A frame's Detections go through, on the pipeline's output thread, one camera at a time:

- ``tracker.Tracker``: ByteTrack-style multi-object tracking (a constant-velocity Kalman
  filter per track, ``kalman``; IoU association solved by scipy's
  ``linear_sum_assignment``; a second pass for low-confidence detections; tentative
  tracks confirmed after ``min_hits`` frames; lost tracks kept ``max_lost_frames`` for
  re-association; IoU of every pair at once in ``iou``). It gives each detection a ``track_id``.
- ``zones``: optional polygons per camera (fractions of the frame); validated at config load.
- ``events.CameraEvents``: start, update (class or zone change) and end events, and the
  current counts per class and per zone, derived from the confirmed tracks.
- ``stage.CameraTracking``: the three wired together for one camera; the pipeline calls it.

Track ids count from 1 per camera and per agent start: ``boot_id`` scopes them.
Nothing here imports scipy before a Tracker is made (``import agent`` works without it).
"""
