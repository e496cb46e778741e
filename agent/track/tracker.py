"""ByteTrack-style multi-object tracking for one camera: ``Tracker.update(detections) -> TrackUpdate``.

Per frame (Zhang et al., "ByteTrack", ECCV 2022, with SORT's Kalman filter):

0. given the frame (``update(..., image)``) and ``appearance_weight`` > 0, each detection's
   colour is read (``appearance``: the median of 9 pixels mid-box); one overlapping no
   other detection is "clean" (its colour is its own, not an occluder's). A detection
   overlapping a more confident one by IoU > 0.7 is set aside: the detector's NMS is
   per class, and one object seen as two classes must not become two tracks;
1. every track's box is predicted one frame ahead (``kalman``);
2. confirmed tracks (seen last frame or lost) are matched to the high-confidence
   detections (score >= ``high_threshold``) by IoU, the assignment solved optimally
   (scipy's ``linear_sum_assignment``), pairs below ``match_iou`` refused. With colours
   (DeepSORT and BoT-SORT fuse a re-identification embedding with motion alike), a
   clean detection scores its IoU less ``appearance_weight`` x its colour distance to
   the track, and is refused beyond ``appearance_gate``: after two objects cross, the
   Kalman prediction no longer hands each track the other. A lost track's box and the
   detections it is compared with grow by ``lost_buffer`` of their size per frame lost
   (at most 0.5: C-BIoU, Yang et al. 2023), so a track hidden for a while finds its
   object again instead of a new track starting;
3. confirmed tracks still unmatched get a second chance with the low-confidence
   detections (``low_threshold`` <= score < ``high_threshold``; IoU >= 0.5): a partly
   hidden object scores low but is still the same object. (ByteTrack offers this only
   to tracks seen last frame; here lost ones take part too: on the demo videos the
   detector sees many objects at 0.1 to 0.4 for seconds.)
3b. with colours, confirmed tracks still unmatched (lost, or refused by the gate: their
   object turned while hidden) take a detection left with score >= ``new_track_threshold`` by colour
   alone (distance <= REFIND_GATE, closest first) if its centre is within REFIND_RADIUS
   x the track's size of the prediction: the object found again keeps its id;
4. tentative tracks (not yet confirmed) are matched to the detections left with
   score >= ``new_track_threshold`` (IoU >= 0.3); a tentative track that misses a
   frame is dropped, so that short-lived false positives never become tracks;
5. such a detection left over starts a tentative track; ``min_hits`` consecutive
   matches confirm it and give it its id;
6. a matched track learns its colour (a moving average, COLOUR_MOMENTUM as BoT-SORT's)
   from a clean detection at score >= ``high_threshold`` only. A confirmed track not
   matched is lost; lost for more than ``max_lost_frames`` it ends. While lost for at
   most ``coast_frames`` it is still reported (at its predicted box): a missed
   detection or two does not end a presence.

Association ignores the class (on the demo videos making it class-aware tripled the
ID switches: the detector flips between classes); a track's class is the one with the
highest summed confidence over its matches. The table holds at most ``max_tracks``
tracks: when full, the longest-lost track makes room, and a detection that finds no
room starts no track (counted in ``dropped``). Without an image every step is motion
alone, as before the colour cue. The defaults were chosen on the demo video (seed 0)
only: benchmarks/track_accuracy.py measures them there and on videos of other seeds.
"""

import numpy as np

from .. import native
from ..errors import AgentError
from . import appearance, kalman
from .iou import iou_matrix, pairs

SECOND_PASS_IOU = 0.5  # ByteTrack's: low-confidence detections must overlap well
TENTATIVE_IOU = 0.3  # ByteTrack's for unconfirmed tracks


DUPLICATE_IOU = 0.7
ISOLATED_IOU = 0.05  # a detection overlapping another by more is not used to learn a track's colour
REFIND_GATE = 0.1  # a lost track re-found by colour alone: at most this far (seed 0: 0.02 to 0.2 alike)
REFIND_RADIUS = 3.0  # ... and its centre within this many times the track's size of the predicted one
COLOUR_MOMENTUM = 0.9  # a track's colour: this x its average + (1 - this) x the new one (BoT-SORT's)
MAX_BUFFER = 0.5

# Per track, one row of ``Tracker._state`` (one array, so that the table grows, shrinks and is
# gathered in one numpy operation each): its Kalman mean (cx, cy, a, h, then their velocities)
# and covariance (kalman: 3 x 4), its colour's moving average (appearance.describe) and
# whether it has one (tracks seen without images do not).
_MEAN, _COV, _COLOUR, _COLOURED = slice(0, 8), slice(8, 20), slice(20, 23), 23
_WIDTH = 24


def _flags(dd, scores):
    """(duplicate, clean) per detection, from ``dd`` (the IoU of every pair of detections): duplicate
    when a more confident one overlaps it by IoU > DUPLICATE_IOU (NMS is per class: one object seen
    as two classes must not become two tracks); clean when it overlaps no other by more than
    ISOLATED_IOU (its colour is its own). The C loop where built; the numpy below: its reference."""
    if native.LIB is not None:
        return native.detection_flags(dd, scores, DUPLICATE_IOU, ISOLATED_IOU)
    stronger = scores[None, :] > scores[:, None]  # [i, j]: j is more confident than i
    return ((dd > DUPLICATE_IOU) & stronger).any(1), (dd > ISOLATED_IOU).sum(1) <= 1


def _covariances(state):
    """The Kalman covariances (N x 3 x 4) of state rows (N x _WIDTH): a view, updated in place."""
    return state[:, _COV].reshape(len(state), 3, 4)


def check_available():
    """Raise AgentError if the tracker cannot run here (scipy missing)."""
    _solver()


def _solver():
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:
        raise AgentError("tracking needs scipy ({}): pip install scipy, or on JetPack apt-get install "
                         "python3-scipy; or set tracking.enabled: false".format(e))
    return linear_sum_assignment


class Track(object):
    """One object followed across frames. ``id`` is 0 until the track is confirmed."""

    __slots__ = ("id", "confirmed", "hits", "lost", "votes", "class_id", "score", "box", "best_score",
                 "best_box", "first_seen", "last_seen", "end_reason")

    def __init__(self, box, score, class_id, timestamp):
        self.id = 0
        self.confirmed = False
        self.hits = 1
        self.lost = 0  # frames since the last match
        self.votes = {class_id: score}
        self.class_id = class_id
        self.score = score
        self.box = box  # the matched detection's box; while coasting, the predicted one
        self.best_score = score
        self.best_box = box
        self.first_seen = timestamp
        self.last_seen = timestamp
        self.end_reason = None  # lost | evicted | stopped, once ended

    def _hit(self, box, score, class_id, timestamp):
        self.hits += 1
        self.lost = 0
        self.box = box
        self.score = score
        self.last_seen = timestamp
        votes = self.votes
        votes[class_id] = votes.get(class_id, 0.0) + score
        if class_id != self.class_id and votes[class_id] > votes[self.class_id]:
            self.class_id = class_id
        if score > self.best_score:
            self.best_score, self.best_box = score, box


class TrackUpdate(object):
    """What one ``Tracker.update`` found.

    ``track_ids``: per input detection, its confirmed track's id or 0; ``tracks``: the
    confirmed tracks in view (matched now, or lost for at most ``coast_frames``);
    ``ended``: confirmed tracks that ended in this update (``end_reason`` set).
    """

    __slots__ = ("track_ids", "tracks", "ended")

    def __init__(self, track_ids, tracks, ended):
        self.track_ids, self.tracks, self.ended = track_ids, tracks, ended


class Tracker(object):
    """The tracks of one camera; ``settings`` is a ``config.TrackingConfig``. Raises AgentError without scipy."""

    def __init__(self, settings):
        self.settings = settings
        self._assign = _solver()
        self.tracks = []
        self._state = np.zeros((0, _WIDTH))  # a row per track, in the order of ``tracks``
        self._next_id = 1
        self.frames = 0
        self.dropped = 0  # detections that found no room in the table

    def update(self, boxes, scores, class_ids, timestamp, image=None):
        """Track one frame's detections (N x 4 xyxy pixels, N scores, N class ids); ``image``: the
        frame they were found in (H x W x 3 BGR or H x W), for the appearance cue (without it,
        or with ``appearance_weight`` 0, association is by motion alone)."""
        s = self.settings
        self.frames += 1
        tracks = self.tracks
        n, m = len(tracks), len(scores)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(m, 4)
        scores = np.asarray(scores, dtype=np.float64)
        eligible = scores >= s.new_track_threshold  # may start a track, or continue a tentative one
        measured = kalman.xyxy_to_xyah(boxes)  # what the filter corrects a track with, or starts one from
        det_of = np.full(n, -1, np.int64)
        pred = sim = None
        colours = appearance.describe(image, boxes) if image is not None and s.appearance_weight > 0 else None
        state = self._state
        if n:
            kalman.predict(state[:, _MEAN], _covariances(state))
            pred = kalman.xyah_to_xyxy(state[:, :4])
        if not m:
            used = clean = np.zeros(0, bool)
        elif not n:
            used, clean = _flags(iou_matrix(boxes, boxes), scores)
        else:
            lost = np.array([t.lost for t in tracks], np.float64)
            buffer = np.minimum(lost * s.lost_buffer, MAX_BUFFER) if s.lost_buffer > 0 and lost.any() else None
            iou, dd = pairs(pred, boxes, buffer)  # tracks x detections, detections x detections
            used, clean = _flags(dd, scores)
            if colours is not None and state[:, _COLOURED].any():
                sim = self._similarity(iou, colours, clean)
            high = scores >= s.high_threshold
            low = ~high & (scores >= s.low_threshold)
            confirmed = np.array([t.confirmed for t in tracks])
            self._match(iou, sim, confirmed, high & ~used, s.match_iou, det_of, used)
            self._match(iou, sim, confirmed & (det_of < 0), low & ~used, max(s.match_iou, SECOND_PASS_IOU),
                        det_of, used)
            if sim is not None:
                self._refind(pred, boxes, colours, confirmed & (det_of < 0) & (state[:, _COLOURED] > 0),
                             eligible & ~used, det_of, used)
            self._match(iou, sim, ~confirmed, eligible & ~used,
                        max(s.match_iou, TENTATIVE_IOU), det_of, used)
        track_ids = np.zeros(m, np.int64)
        matched = np.flatnonzero(det_of >= 0)
        if len(matched):
            di = det_of[matched]
            found = boxes[di]
            rows = state[matched]
            kalman.update(rows[:, _MEAN], _covariances(rows), measured[di])
            if colours is not None:
                self._learn(rows, di, colours, scores, clean)
            state[matched] = rows
            ids = []
            min_hits = s.min_hits
            for i, box, score, class_id in zip(matched.tolist(), found.tolist(), scores[di].tolist(),
                                               np.asarray(class_ids)[di].tolist()):
                t = tracks[i]
                t._hit(box, score, class_id, timestamp)
                if not t.confirmed and t.hits >= min_hits:
                    self._confirm(t)
                ids.append(t.id)
            track_ids[di] = ids
        ended = self._age(det_of, pred)
        self._start(boxes, measured, scores, class_ids, eligible & ~used, track_ids, timestamp, ended, colours, clean)
        coast = s.coast_frames
        return TrackUpdate(track_ids, [t for t in self.tracks if t.confirmed and t.lost <= coast], ended)

    def close(self):
        """End every confirmed track (``end_reason`` 'stopped'); returns them. The table is empty after."""
        ended = [t for t in self.tracks if t.confirmed]
        for t in ended:
            t.end_reason = "stopped"
        self.tracks = []
        self._state = self._state[:0]
        return ended

    # --- steps -----------------------------------------------------------------------------

    def _similarity(self, iou, colours, clean):
        """The score that ranks pairs: IoU less ``appearance_weight`` x the colour distance of each
        track (that has a colour) and ``clean`` detection (overlapping no other: the colour of
        one that does may be its occluder's), at least 1e-6 (every pair a candidate); 0 for a
        pair further apart than ``appearance_gate`` (or whose fused score is below -0.5): refused.
        Where agent/native is built, one C loop (the same bits); the numpy below is its reference."""
        s = self.settings
        state = self._state
        if native.LIB is not None:
            return native.similarity(iou, state[:, _COLOUR], state[:, _COLOURED], colours, clean, appearance.SCALE,
                                     s.appearance_weight, s.appearance_gate)
        dist = appearance.distance(state[:, _COLOUR], colours)
        dist *= state[:, _COLOURED, None]  # 0 for a track without a colour
        dist *= clean  # and for a detection that is not clean
        sim = iou - s.appearance_weight * dist
        sim[dist > s.appearance_gate] = -1.0
        score = np.maximum(sim, 1e-6)
        score[sim < -0.5] = 0.0
        return score

    def _learn(self, rows, di, colours, scores, clean):
        """Tracks (``rows`` of the state, updated in place) matched to detections ``di`` take their colours
        into their moving averages: only from a confident detection that overlaps no other (an
        occluder's colour must not leak in). Where agent/native is built, one C loop (the same bits)."""
        if native.LIB is not None:
            native.learn_colours(rows, _COLOUR.start, di, colours, scores, clean, self.settings.high_threshold,
                                 COLOUR_MOMENTUM)
            return
        ok = clean[di] & (scores[di] >= self.settings.high_threshold)
        learn, di = rows[ok], di[ok]
        keep = np.where(learn[:, _COLOURED] == 0, 0.0, COLOUR_MOMENTUM)[:, None]
        learn[:, _COLOUR] = keep * learn[:, _COLOUR] + (1.0 - keep) * colours[di]
        learn[:, _COLOURED] = 1.0
        rows[ok] = learn

    def _refind(self, pred, boxes, colours, rows, cols, det_of, used):
        """Lost tracks ``rows`` that motion could not match take the detections ``cols`` of their colour
        (distance <= REFIND_GATE) whose centre is within REFIND_RADIUS x the track's size of its
        predicted one, the closest colours first."""
        rows, cols = np.flatnonzero(rows), np.flatnonzero(cols)
        if not len(rows) or not len(cols):
            return
        if native.LIB is not None:  # one C loop (the same bits); the numpy below is its reference
            cost, single = native.refind_cost(pred, rows, boxes, cols, self._state[:, _COLOUR], colours,
                                              appearance.SCALE, REFIND_GATE, REFIND_RADIUS * 2)
        else:
            dist = appearance.distance(self._state[rows, _COLOUR], colours[cols])
            p, b = pred[rows], boxes[cols]
            dx = (p[:, 0:1] + p[:, 2:3]) - (b[:, 0] + b[:, 2])
            dy = (p[:, 1:2] + p[:, 3:4]) - (b[:, 1] + b[:, 3])
            reach = REFIND_RADIUS * 2 * np.maximum(p[:, 2:3] - p[:, 0:1], p[:, 3:4] - p[:, 1:2])
            cost, single = np.where((dist <= REFIND_GATE) & (dx * dx + dy * dy <= reach * reach), dist, 2.0), False
        ok = cost <= REFIND_GATE
        if not ok.any():
            return
        r, c = np.nonzero(ok) if single else self._assign(cost)  # single: every pair within the gates is optimal
        good = ok[r, c]
        det_of[rows[r[good]]] = cols[c[good]]
        used[cols[c[good]]] = True

    def _match(self, iou, sim, rows, cols, min_iou, det_of, used):
        """Assign ``rows`` (a track mask) to ``cols`` (a detection mask) maximizing IoU (``sim``, when
        given: the fused score of ``_similarity``, 0 where refused); pairs below ``min_iou`` refused."""
        rows, cols = rows.nonzero()[0], cols.nonzero()[0]
        if not len(rows) or not len(cols):
            return
        if native.LIB is not None:  # one C loop (the same bits); the numpy below is its reference
            cost, single = native.pass_cost(iou, sim, rows, cols, min_iou)
        else:
            single = False
            sub = iou.take(rows, 0).take(cols, 1)
            if sim is None:
                sub[sub < min_iou] = 0.0  # a refused pair must not pull the optimum away from good ones
            else:
                refused = sub < min_iou
                sub = sim.take(rows, 0).take(cols, 1)
                sub[refused] = 0.0
            cost = -sub
        # A minimum cost (``maximize=`` is newer than scipy 0.19); single (no row or column with two
        # candidates): every candidate pair is the optimum, no solver (43 us a call in scipy 1.5).
        r, c = np.nonzero(cost) if single else self._assign(cost)
        ok = cost[r, c] < 0.0
        c = cols[c[ok]]
        det_of[rows[r[ok]]] = c
        used[c] = True

    def _confirm(self, track):
        track.confirmed = True
        track.id = self._next_id
        self._next_id += 1

    def _age(self, det_of, pred):
        """Unmatched tracks: tentative ones are dropped, confirmed ones lost, then ended; returns the ended."""
        s = self.settings
        keep = None
        ended = []
        for i in np.flatnonzero(det_of < 0).tolist():
            t = self.tracks[i]
            t.lost += 1
            t.box = pred[i].tolist()
            if not t.confirmed or t.lost > s.max_lost_frames:
                if keep is None:
                    keep = np.ones(len(self.tracks), bool)
                keep[i] = False
                if t.confirmed:
                    t.end_reason = "lost"
                    ended.append(t)
        if keep is not None:
            self._compact(keep)
        return ended

    def _start(self, boxes, measured, scores, class_ids, left, track_ids, timestamp, ended, colours, clean):
        """New tentative tracks from the confident detections ``left`` over (a mask; as room allows)."""
        s = self.settings
        new = np.flatnonzero(left)
        if not len(new):
            return
        room = s.max_tracks - len(self.tracks)
        if room < len(new):
            room += self._evict(len(new) - room, ended)
            if room < len(new):
                self.dropped += len(new) - room
                new = new[:max(room, 0)]
                if not len(new):
                    return
        rows = np.zeros((len(new), _WIDTH))
        kalman.initiate(measured[new], rows[:, _MEAN], _covariances(rows))
        if colours is not None:
            rows[:, _COLOUR], rows[:, _COLOURED] = colours[new], clean[new]
        self._state = np.concatenate([self._state, rows])
        class_list = np.asarray(class_ids)[new].tolist()
        for k, (box, score) in enumerate(zip(boxes[new].tolist(), scores[new].tolist())):
            t = Track(box, score, class_list[k], timestamp)
            self.tracks.append(t)
            if s.min_hits <= 1:
                self._confirm(t)
                track_ids[new[k]] = t.id

    def _evict(self, wanted, ended):
        """Make room for up to ``wanted`` tracks by ending the longest-lost ones; returns how many went."""
        lost = sorted((i for i, t in enumerate(self.tracks) if t.lost), key=lambda i: -self.tracks[i].lost)[:wanted]
        if not lost:
            return 0
        keep = np.ones(len(self.tracks), bool)
        keep[lost] = False
        for i in lost:
            t = self.tracks[i]
            if t.confirmed:
                t.end_reason = "evicted"
                ended.append(t)
        self._compact(keep)
        return len(lost)

    def _compact(self, keep):
        self.tracks = [t for t, k in zip(self.tracks, keep.tolist()) if k]
        self._state = self._state[keep]

