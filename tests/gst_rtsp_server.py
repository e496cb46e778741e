"""A real RTSP camera for tests/test_gstreamer.py: gst-rtsp-server streaming a moving test pattern.

Run with the system Python (python3-gi, gir1.2-gst-rtsp-server-1.0):
    python3 tests/gst_rtsp_server.py CODEC PORT    (CODEC h264 or h265; PORT 0 picks a free one)
It prints the bound port on one line, serves rtsp://127.0.0.1:PORT/cam until killed and
exits 3 when GStreamer's RTSP server or an encoder is missing.

Like many cameras it also sends an audio track, listed first, so the client must pick the
video. The video is 4:2:0 8-bit (what cameras send and Jetson's decoder takes): a ball moving
on black, so every frame differs from the last.
"""

import sys

ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph265pay",
}


def main(codec, port):
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as exc:
        print("gst_rtsp_server: {} (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0)".format(exc),
              file=sys.stderr)
        return 3
    Gst.init(None)
    encoder = ENCODERS[codec].split()[0]
    if Gst.ElementFactory.find(encoder) is None:
        print("gst_rtsp_server: no {} element (gstreamer1.0-plugins-ugly, -bad)".format(encoder),
              file=sys.stderr)
        return 3
    launch = ("( audiotestsrc is-live=true ! audioconvert ! alawenc ! rtppcmapay name=pay0 pt=8 "
              "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! "
              "videoconvert ! video/x-raw,format=I420 ! {} name=pay1 pt=96 )".format(ENCODERS[codec]))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory("/cam", factory)
    if not server.attach(None):
        print("gst_rtsp_server: cannot listen on port {}".format(port), file=sys.stderr)
        return 3
    print(server.get_bound_port(), flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
