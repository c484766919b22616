# SPDX-License-Identifier: MIT

# cmake -DIN=page.html -DOUT=page_html.h -P embed.cmake
#
# Writes IN's bytes as the C array page_html[] and its length page_html_len,
# so that a C file can serve the page without reading a file at run time.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR len "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUT}.tmp"
  "/* Generated from page.html by embed.cmake: do not edit. */\n"
  "static const unsigned char page_html[] = {\n    ${bytes}\n};\n"
  "static const unsigned long page_html_len = ${len}UL;\n")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
