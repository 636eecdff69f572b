"""Defaults and limits of ``unica app``, in a module that imports nothing (the CLI parser reads them)."""

# Query images: these formats only (PIL identifies the bytes, whatever the file is called), at most this many
# pixels (read from the header before anything is decoded; phone photos are 12 to 50 megapixels).
QUERY_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_MAX_QUERY_PIXELS = 50_000_000
# Uploads over this size are refused by Gradio before they reach the app.
DEFAULT_MAX_FILE_SIZE = "20mb"
MAX_QUERY_CHARS = 4000
MAX_K = 1000
DEFAULT_K = 10
MAX_PAGE_K = 50
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_TITLE = "UniCA search"
