"""Voila's settings for the course explorer: ``make explorer`` and the browser tests put this folder on
``JUPYTER_CONFIG_PATH`` (a user's own ``voila.py`` in ``~/.jupyter`` still takes precedence)."""

c = get_config()  # noqa: F821 (defined by traitlets when it loads this file)

# The upload button sends the whole file to the kernel in one websocket message. Tornado's default limit is 10 MiB,
# and a longer message closes the kernel connection with nothing said in the page, so a 20-megapixel photo (the
# largest image liftcam_utils.app.uploads accepts) could not even be refused with a message. 96 MiB holds any
# 20-megapixel image file at 8 bits per channel, even an uncompressed RGBA one (80 MB plus its header).
MAX_UPLOAD_BYTES = 96 * 1024 * 1024
# The message carries the file's name, its widget's state and the message's ids besides the file: a few KiB.
MESSAGE_HEADROOM_BYTES = 64 * 1024
# The limit stays under the 100 MiB that Tornado's HTTP server buffers for one read (its max_buffer_size, which Voila
# does not let us raise): a websocket frame longer than that is dropped whatever this limit says.
c.Voila.tornado_settings = {"websocket_max_message_size": MAX_UPLOAD_BYTES + MESSAGE_HEADROOM_BYTES}
# The page (apps/jupyter/voila/templates/offline-lab/index.html.j2) refuses a larger file before it is sent, with a
# message naming its size and this limit, so the kernel connection stays open.
c.VoilaConfiguration.resources = {"max_upload_bytes": MAX_UPLOAD_BYTES}
# Two JupyterLab extensions that otter-grader (the course extra) installs, jupytext's and ipylab's, need parts of
# JupyterLab that Voila has not (the document manager, the main menu): loaded in the page, they fail in its console.
c.VoilaConfiguration.extension_denylist = ["jupyterlab-jupytext", "ipylab"]
