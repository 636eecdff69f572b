"""The Gradio page of ``unica app``: a text box and an image drop zone, top-k results side by side.

Layout: on the left the task (one of the evaluation folder's), a picker of the task's own queries, the
query text, the image drop zone (with a preview of the image the query uses), k and the Search button, and
a status line where every problem with the input is reported (also as a toast: ``gr.Warning``). On the
right one results gallery per model (two with ``--compare``): each hit a card with its thumbnail, rank,
id, score and text; hits both models return are marked *shared*; for a query of the evaluation set its
relevant documents are marked *relevant* and the model's R@k for that query is shown above its gallery.

Gradio is imported only inside :func:`build_app` / :func:`launch`; the rendering helpers are plain Python.
The galleries carry the ids as ``data-doc-id`` attributes (``#gallery-0 [data-doc-id]``): what the browser
test compares with :meth:`~unica.apps.app.search.SearchIndex.search`.
"""

from __future__ import annotations

import base64
import html
import io
import ipaddress
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .defaults import DEFAULT_HOST, DEFAULT_K, DEFAULT_MAX_FILE_SIZE, DEFAULT_PORT, DEFAULT_TITLE, MAX_PAGE_K
from .search import Hit, SearchIndex, SearchSession, load_query_image, query_item

logger = logging.getLogger("unica.app")

MAX_PICKER_QUERIES = 2000
THUMBNAIL_SIZE = 192
TEXT_PREVIEW_CHARS = 280
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

CSS = """
.unica-grid {display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px;}
.unica-hit {border: 2px solid var(--border-color-primary); border-radius: 8px; padding: 6px;
            background: var(--background-fill-secondary); font-size: 13px; line-height: 1.3; overflow: hidden;}
.unica-hit.relevant {border-color: #16a34a;}
.unica-hit.shared {outline: 3px dashed #f59e0b; outline-offset: -6px;}
.unica-thumb {width: 100%; height: 128px; object-fit: contain; image-rendering: pixelated; background: #fff;
              border-radius: 4px; display: block;}
.unica-noimage {height: 128px; display: flex; align-items: center; justify-content: center; border-radius: 4px;
                background: var(--background-fill-primary); color: var(--body-text-color-subdued); font-size: 12px;}
.unica-meta {margin-top: 4px; display: flex; flex-wrap: wrap; gap: 4px; align-items: center;}
.unica-rank {font-weight: 700;}
.unica-id {font-family: var(--font-mono); font-size: 12px;}
.unica-score {color: var(--body-text-color-subdued);}
.unica-badge {display: inline-block; padding: 0 5px; border-radius: 4px; font-size: 11px; font-weight: 600;}
.unica-badge.relevant {background: #dcfce7; color: #166534;}
.unica-badge.shared {background: #fef3c7; color: #92400e;}
.unica-text {margin-top: 4px; max-height: 6.6em; overflow: hidden;}
.unica-empty {color: var(--body-text-color-subdued); padding: 12px 0;}
"""


def _escape(text: str) -> str:
    """HTML-escaped text that no template engine expands either (``$``, braces)."""
    return html.escape(text, quote=True).replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;")


class Thumbnails:
    """Small JPEG data URIs of corpus images, decoded with the safe loader, the most recent few thousand kept."""

    def __init__(self, size: int = THUMBNAIL_SIZE, capacity: int = 4096):
        self.size, self.capacity = size, capacity
        self._cache: OrderedDict[tuple[int, int], str | None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, index: SearchIndex, position: int) -> str | None:
        key = (id(index), position)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            image = index.document_image(position)
        except (ValueError, FileNotFoundError) as error:  # a bad image in the corpus: the card says so
            logger.warning("%s: %s", index.task.corpus_ids[position], error)
            image = None
        uri = None
        if image is not None:
            image = image.copy()
            image.thumbnail((self.size, self.size))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=85)
            uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        with self._lock:
            self._cache[key] = uri
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return uri


def render_hits(hits: Sequence[Hit], index: SearchIndex, thumbnails: Thumbnails | None = None,
                shared: frozenset[str] | set[str] = frozenset(), model_number: int = 0) -> str:
    """The HTML gallery of one model's hits: a card per hit (thumbnail, rank, id, score, text, marks)."""
    if not hits:
        return '<div class="unica-empty">No results.</div>'
    cards = []
    for hit in hits:
        classes = ["unica-hit"] + (["relevant"] if hit.relevant else []) + (["shared"] if hit.doc_id in shared else [])
        uri = thumbnails(index, hit.position) if (thumbnails is not None and hit.has_image) else None
        if uri:
            picture = f'<img class="unica-thumb" src="{uri}" alt="image of {_escape(hit.doc_id)}">'
        else:
            picture = f'<div class="unica-noimage">{"image unreadable" if hit.has_image else "text only"}</div>'
        badges = ""
        if hit.relevant:
            badges += '<span class="unica-badge relevant" title="relevant to this query (qrels)">relevant</span>'
        if hit.doc_id in shared:
            badges += '<span class="unica-badge shared" title="both models return it in their top k">shared</span>'
        text = hit.text or ""
        if len(text) > TEXT_PREVIEW_CHARS:
            text = text[: TEXT_PREVIEW_CHARS - 1] + "…"
        cards.append(
            f'<div class="{" ".join(classes)}" data-doc-id="{_escape(hit.doc_id)}" data-rank="{hit.rank}" '
            f'data-score="{hit.score:.6f}" data-relevant="{str(bool(hit.relevant)).lower()}" '
            f'data-shared="{str(hit.doc_id in shared).lower()}">{picture}'
            f'<div class="unica-meta"><span class="unica-rank">#{hit.rank}</span>'
            f'<span class="unica-id">{_escape(hit.doc_id)}</span>'
            f'<span class="unica-score">{hit.score:.4f}</span>{badges}</div>'
            f'<div class="unica-text" title="{_escape(hit.text or "")}">{_escape(text)}</div></div>'
        )
    return f'<div class="unica-grid" data-model="{model_number}">' + "".join(cards) + "</div>"


def shared_ids(results: Sequence[Sequence[Hit]]) -> frozenset[str]:
    """Ids every model returned (empty with one model)."""
    if len(results) < 2:
        return frozenset()
    common = set(hit.doc_id for hit in results[0])
    for hits in results[1:]:
        common &= {hit.doc_id for hit in hits}
    return frozenset(common)


def model_heading(index: SearchIndex) -> str:
    source = "embeddings from the cache" if index.from_cache else "embeddings encoded at start"
    return (f"### {_escape(index.model.name)}\n`fusion={index.model.fusion}` · {len(index)} documents of "
            f"{index.task.name} · {source}")


def query_metrics_markdown(index: SearchIndex, qid: str, hits: Sequence[Hit]) -> str:
    """The R@k line of a query of the evaluation set for one model."""
    scores = index.query_scores(qid, hits)
    k = scores["k"]
    return (f"**R@{k} = {scores[f'hit@{k}']:.0f}** (a relevant document in the top {k}, the UniCA paper's "
            f"Recall@{k}) · recall@{k} = {scores['found']}/{scores['relevant']} = {scores[f'recall@{k}']:.2f} · "
            f"MRR@{k} = {scores[f'mrr@{k}']:.2f}")


def search_page(session: SearchSession, task: str, qid: str | None, text: str | None, image: Any, k: Any,
                thumbnails: Thumbnails | None = None) -> tuple[str, list[str], list[str]]:
    """(status, headings, galleries) for a query: the evaluation set's ``qid`` when given, else the text and
    image. Raises ``ValueError`` for bad input (the page shows it)."""
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise ValueError(f"k={k!r} must be a whole number from 1 to {MAX_PAGE_K}") from None
    if not 1 <= k <= MAX_PAGE_K:
        raise ValueError(f"k={k} must be from 1 to {MAX_PAGE_K}")
    start = time.perf_counter()
    indexes = session.indexes(task)
    if qid:
        results = [index.search_query(qid, k) for index in indexes]
    else:
        item = query_item(text or None, image, max_pixels=session.max_pixels)
        results = [index.search_item(item, k) for index in indexes]
    elapsed = time.perf_counter() - start
    shared = shared_ids(results)
    headings, galleries = [], []
    for number, (index, hits) in enumerate(zip(indexes, results)):
        heading = model_heading(index)
        if qid:
            heading += "\n\n" + query_metrics_markdown(index, qid, hits)
        headings.append(heading)
        galleries.append(render_hits(hits, index, thumbnails, shared, number))
    what = f"query `{qid}` of the evaluation set" if qid else "your query"
    status = f"Top {k} of {len(indexes[0])} documents ({indexes[0].task.name}) for {what} in {elapsed * 1000:.0f} ms"
    if len(indexes) > 1:
        status += f"; {len(shared)} shared by both models"
    return status + ".", headings, galleries


def query_choices(index: SearchIndex) -> list[tuple[str, str]]:
    """(label, qid) of the task's queries for the picker (the first :data:`MAX_PICKER_QUERIES`)."""
    return [(query.label(), query.qid) for query in index.queries()[:MAX_PICKER_QUERIES]]


def build_app(session: SearchSession, task: str | None = None, k: int = DEFAULT_K, title: str = DEFAULT_TITLE):
    """The ``gr.Blocks`` page searching ``session`` (starts on ``task``, default the folder's first)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    task = session.tasks[0] if task is None else task
    first = session.indexes(task)  # built before the page serves (from the cache when it holds the embeddings)
    thumbnails = Thumbnails()
    count = len(session.models)
    empty = ['<div class="unica-empty">Type a text, drop an image, or pick a query of the evaluation set.</div>']

    def problem(error: BaseException) -> str:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        gr.Warning(message)
        return f"⚠️ **{_escape(message)}**"

    def unexpected(error: BaseException) -> str:
        logger.exception("the search failed")
        return problem(RuntimeError(f"the search failed ({type(error).__name__}: {error}); see the server log"))

    def run_search(task_name, qid, text, upload, k_value):
        try:
            status, headings, galleries = search_page(session, task_name, qid, text, upload, k_value, thumbnails)
        except (ValueError, FileNotFoundError) as error:
            return (problem(error), *[gr.update() for _ in range(count)], *(empty * count))
        except Exception as error:  # the server keeps serving; the trace goes to its log only
            return (unexpected(error), *[gr.update() for _ in range(count)], *(empty * count))
        return (status, *headings, *galleries)

    def pick_query(task_name, qid, k_value):
        if not qid:
            return (gr.update(), gr.update(), gr.update(), *[gr.update()] * (1 + 2 * count))
        try:
            index = session.index(0, task_name)
            query = index.queries()[index.query_position(qid)]
            image = index.query_image(qid)
        except (ValueError, FileNotFoundError) as error:
            return (gr.update(), gr.update(), gr.update(), problem(error), *[gr.update()] * (2 * count))
        return (query.text or "", None, image, *run_search(task_name, qid, query.text, None, k_value))

    def check_upload(path):
        if not path:
            return None, "", gr.update(), gr.update()
        try:
            image = load_query_image(path, max_pixels=session.max_pixels)
        except (ValueError, FileNotFoundError) as error:
            return None, problem(error), gr.update(), None
        except Exception as error:
            return None, unexpected(error), gr.update(), None
        return image, f"Query image ready: {image.width}x{image.height} pixels.", None, gr.update()

    def change_task(task_name):
        try:
            indexes = session.indexes(task_name)
        except (ValueError, FileNotFoundError) as error:
            return (gr.update(choices=[], value=None), problem(error), *[gr.update()] * count, *(empty * count))
        except Exception as error:
            return (gr.update(choices=[], value=None), unexpected(error), *[gr.update()] * count, *(empty * count))
        status = f"{task_name}: {len(indexes[0])} documents, {len(indexes[0].task.query_ids)} queries."
        return (gr.update(choices=query_choices(indexes[0]), value=None), status,
                *[model_heading(index) for index in indexes], *(empty * count))

    models = " vs ".join(f"**{_escape(m.name)}** (`fusion={m.fusion}`)" for m in session.models)
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {_escape(title)}\nCorpus `{_escape(session.corpus.name)}` · {models}. Type a text, drop an "
                    "image, or both; or pick a query of the evaluation set to see its relevant documents and R@k.",
                    elem_id="header")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                task_box = gr.Dropdown(choices=session.tasks, value=task, label="Task (corpus)", elem_id="task")
                picker = gr.Dropdown(choices=query_choices(first[0]), value=None, label="Query of the evaluation set",
                                     elem_id="query-picker", filterable=True)
                text = gr.Textbox(label="Text", lines=2, max_lines=6, elem_id="query-text",
                                  placeholder="e.g. a small red circle on the left")
                upload = gr.File(label="Image: drop or click (PNG, JPEG, WEBP, GIF, BMP, TIFF)", type="filepath",
                                 file_count="single", elem_id="query-image-file", height=110)
                preview = gr.Image(label="Query image", type="pil", interactive=False, elem_id="query-image",
                                   height=150)
                k_box = gr.Slider(1, MAX_PAGE_K, value=min(k, MAX_PAGE_K), step=1, label="Top k", elem_id="k")
                with gr.Row():
                    search_button = gr.Button("Search", variant="primary", elem_id="search")
                    clear_button = gr.Button("Clear", elem_id="clear")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=3):
                with gr.Row(equal_height=False):
                    headings, galleries = [], []
                    for number, index in enumerate(first):
                        with gr.Column():
                            headings.append(gr.Markdown(model_heading(index), elem_id=f"metrics-{number}"))
                            galleries.append(gr.HTML(empty[0], elem_id=f"gallery-{number}"))
        results = [status, *headings, *galleries]
        search_inputs = [task_box, picker, text, upload, k_box]
        search_button.click(run_search, search_inputs, results, api_name="search")
        text.submit(run_search, search_inputs, results, api_visibility="private")
        picker.input(pick_query, [task_box, picker, k_box], [text, upload, preview, *results],
                     api_visibility="private")
        # Typing makes it a free query: the picked query is dropped (and its image, unless one was uploaded).
        text.input(lambda path: (None, gr.update() if path else None), upload, [picker, preview],
                   api_visibility="private", queue=False, show_progress="hidden")
        upload.upload(check_upload, upload, [preview, status, picker, upload], api_visibility="private")
        upload.clear(lambda: (None, ""), None, [preview, status], api_visibility="private")
        task_box.input(change_task, task_box, [picker, status, *headings, *galleries], api_visibility="private")

        def clear(task_name):
            try:
                headings_now = [model_heading(index) for index in session.indexes(task_name)]
            except Exception:  # the headings keep what they show
                headings_now = [gr.update()] * count
            return ("", None, None, None, "", *headings_now, *(empty * count))

        clear_button.click(clear, task_box, [text, upload, preview, picker, status, *headings, *galleries],
                           api_visibility="private")
    return page


def is_local_host(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, port: int) -> None:
    if not is_local_host(host):
        logger.warning("serving on %s:%d: anyone who can reach this port can query the corpus and see its documents "
                       "(the default, 127.0.0.1, serves this machine only)", host, port)


def launch(page: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True, open_browser: bool = False,
           max_file_size: str | int = DEFAULT_MAX_FILE_SIZE, quiet: bool = False) -> Any:
    """Serve ``page`` on ``host:port`` (blocking unless ``block=False``); returns the page.

    Uploads over ``max_file_size`` are refused by Gradio before they reach the app.
    """
    warn_if_exposed(host, port)
    page.queue(default_concurrency_limit=2)
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, inbrowser=open_browser,
                max_file_size=max_file_size, show_error=False, quiet=quiet, ssr_mode=False, css=CSS,
                footer_links=["api", "settings"])
    return page
