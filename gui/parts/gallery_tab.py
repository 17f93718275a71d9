"""Dataset: the image folder as thumbnails with editable captions, its N_name folders with repeats
and steps, the images a run would skip, and tag counts with remove / replace everywhere."""

from __future__ import annotations

import gradio as gr

from gui.parts.page import Page
from gui.widgets import collect

PER_PAGE = 24
FOLDERS = {"Image folder": "train_data_dir", "Regularisation folder": "reg_data_dir"}


class GalleryTab:
    def __init__(self, page: Page):
        self.page = page
        gr.Markdown("Your dataset as the run sees it: every image with the caption it trains on. Click an image to "
                    "edit its caption; the text cache notices edited captions and re-encodes only those.")
        with gr.Row(equal_height=True):
            self.which = gr.Radio(list(FOLDERS), value="Image folder", label="Show", elem_id="gallery-which", scale=3)
            self.refresh = gr.Button("Show dataset", variant="primary", elem_id="gallery-refresh", scale=1)
        self.summary = gr.Markdown(elem_id="gallery-summary")
        with gr.Row(equal_height=True):
            self.previous = gr.Button("◀ Previous", elem_id="gallery-previous", size="sm", scale=0, min_width=110)
            self.page_number = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="gallery-page",
                                         scale=0, min_width=90)
            self.next = gr.Button("Next ▶", elem_id="gallery-next", size="sm", scale=0, min_width=110)
            gr.Column(scale=4)  # keeps the paging buttons small
        self.gallery = gr.Gallery(columns=6, height=420, allow_preview=False, elem_id="dataset-gallery",
                                  object_fit="contain", label="Images")
        self.selected = gr.State(None)  # image path of the caption being edited
        with gr.Row(equal_height=True):
            self.caption = gr.Textbox(label="Caption", lines=2, max_lines=6, interactive=True, elem_id="caption-edit",
                                      scale=4, info="Click an image above; Save writes its caption file.")
            self.save = gr.Button("Save caption", elem_id="caption-save", scale=1)
        with gr.Row(equal_height=True):
            self.tag = gr.Dropdown(label="Tag (captions holding it)", choices=[], elem_id="tag-pick", scale=3)
            self.replacement = gr.Textbox(label="Replace with", max_lines=1, elem_id="tag-replacement", scale=2)
            self.remove = gr.Button("Remove everywhere", elem_id="tag-remove", scale=1)
            self.replace = gr.Button("Replace everywhere", elem_id="tag-replace", scale=1)
        self.status = gr.Markdown(elem_id="gallery-status")

    def wire(self, demo: gr.Blocks) -> None:
        inputs = self.page.inputs
        shown = [self.summary, self.gallery, self.page_number, self.tag]
        self.refresh.click(self._show, inputs=[self.which, self.page_number, *inputs], outputs=shown)
        self.previous.click(self._turn(-1), inputs=[self.which, self.page_number, *inputs], outputs=shown)
        self.next.click(self._turn(1), inputs=[self.which, self.page_number, *inputs], outputs=shown)
        self.page_number.submit(self._show, inputs=[self.which, self.page_number, *inputs], outputs=shown)
        self.gallery.select(self._pick, inputs=[self.which, self.page_number, *inputs],
                            outputs=[self.selected, self.caption, self.status])
        self.save.click(self._save, inputs=[self.selected, self.caption, self.which, self.page_number, *inputs],
                        outputs=[self.status, *shown])
        self.remove.click(self._edit_tags(replace=False), inputs=[self.tag, self.replacement, self.which,
                                                                 self.page_number, *inputs],
                          outputs=[self.status, *shown])
        self.replace.click(self._edit_tags(replace=True), inputs=[self.tag, self.replacement, self.which,
                                                                 self.page_number, *inputs],
                           outputs=[self.status, *shown])

    # ---- reading ------------------------------------------------------------------------
    @staticmethod
    def _view(which: str, raw):
        from engine.dataset.gallery import view_dataset

        values, _ = collect(raw)
        return view_dataset(values[FOLDERS[which]], values["caption_extension"], key=FOLDERS[which]), values

    def _show(self, which, number, *raw):
        from engine.dataset.layout import DatasetError

        try:
            view, values = self._view(which, raw)
        except (DatasetError, OSError) as exc:
            return f"**{_escape(str(exc))}**", [], 1, gr.update(choices=[], value=None)
        from gui.gallery_view import gallery_items, summary_text, tag_choices

        pages = view.pages(PER_PAGE)
        number = min(max(int(number or 1), 1), pages)
        return (summary_text(view, values, which == "Image folder", number, pages),
                gallery_items(view.page(number - 1, PER_PAGE)), number, gr.update(choices=tag_choices(view), value=None))

    def _turn(self, direction: int):
        return lambda which, number, *raw: self._show(which, int(number or 1) + direction, *raw)

    def _pick(self, evt: gr.SelectData, which, number, *raw):
        view, _ = self._view(which, raw)
        items = view.page(int(number or 1) - 1, PER_PAGE)
        if evt.index is None or evt.index >= len(items):
            return None, "", ""
        item = items[evt.index]
        source = "its caption file" if item.has_caption_file else "no caption file: the folder name is used"
        return str(item.image_path), item.caption, f"`{item.folder}/{item.image_path.name}` ({source})"

    # ---- writing ------------------------------------------------------------------------
    def _save(self, selected, text, which, number, *raw):
        from engine.dataset.gallery import save_caption
        from engine.dataset.layout import DatasetError

        if not selected:
            return ["**Click an image first.**", *self._show(which, number, *raw)]
        view, _ = self._view(which, raw)
        item = next((i for i in view.items if str(i.image_path) == selected), None)
        if item is None:
            return ["**That image is gone; press Show dataset.**", *self._show(which, number, *raw)]
        try:
            caption = save_caption(item, text)
        except (DatasetError, OSError) as exc:
            return [f"**Not saved:** {_escape(str(exc))}", *self._show(which, number, *raw)]
        return [f"Saved `{item.caption_path.name}`: {_escape(caption)}", *self._show(which, number, *raw)]

    def _edit_tags(self, replace: bool):
        def handler(tag, replacement, which, number, *raw):
            from engine.dataset.gallery import edit_tag_everywhere
            from engine.dataset.layout import DatasetError

            view, _ = self._view(which, raw)
            if replace and not (replacement or "").strip():
                return ["**Type the replacement tag first.**", *self._show(which, number, *raw)]
            try:
                changed = edit_tag_everywhere(view.items, tag or "", replacement if replace else "")
            except (DatasetError, OSError) as exc:
                return [f"**{_escape(str(exc))}**", *self._show(which, number, *raw)]
            done = f"replaced with '{replacement.strip()}'" if replace else "removed"
            return [f"'{_escape(tag)}' {done} in {changed} caption file(s).", *self._show(which, number, *raw)]
        return handler


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("_", "\\_").replace("*", "\\*")
