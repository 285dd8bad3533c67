"""Render resources/icons/edit-auditor.svg to the PNG sizes the packages use (256, 128, 48 px).

    QT_QPA_PLATFORM=offscreen python packaging/render_icon.py
"""

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"


def main() -> None:
    app = QGuiApplication([])  # noqa: F841 - QPainter needs an application object
    renderer = QSvgRenderer(str(ICONS / "edit-auditor.svg"))
    for size, name in ((256, "edit-auditor.png"), (128, "edit-auditor-128.png"), (48, "edit-auditor-48.png")):
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        image.save(str(ICONS / name))
        print(ICONS / name)


if __name__ == "__main__":
    main()
