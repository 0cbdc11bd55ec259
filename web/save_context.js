// Save Context shows what it saved. ComfyUI's frontend draws a node's ui.text only for its own
// text nodes, so this puts the text in a read-only box on the node when it has run.
import { app } from "../../scripts/app.js";

const NODE = "AnimaFastTrainSaveContext";
const WIDGET = "saved";

app.registerExtension({
  name: "AnimaFastTrain.SaveContextText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = [].concat(message?.text ?? []).join("\n");
      let widget = this.widgets?.find((w) => w.name === WIDGET);
      if (!widget) {
        const box = document.createElement("textarea");
        box.readOnly = true;
        box.rows = 2;
        box.style.cssText = "width: 100%; resize: none; font-size: 11px; border: none; "
          + "background: var(--comfy-input-bg, transparent); color: var(--input-text, inherit);";
        // not saved with the workflow: it is what the last run did, not a setting
        widget = this.addDOMWidget(WIDGET, "anima_fasttrain_text", box, {
          serialize: false,
          getValue: () => box.value,
          setValue: (value) => { box.value = value ?? ""; },
        });
        widget.serialize = false;
        const [width, height] = this.computeSize();
        this.setSize([Math.max(this.size[0], width), Math.max(this.size[1], height)]);
      }
      widget.value = text;
      this.setDirtyCanvas?.(true, true);
    };
  },
});
