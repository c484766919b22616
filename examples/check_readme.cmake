# SPDX-License-Identifier: MIT

# cmake -DREADME=<README.md> -DSOURCE=<readme.c> -P check_readme.cmake
#
# README.md shows examples/readme.c in full (less its licence line), in a
# ```c block; the example is built and run like every other, so the
# README's code is known to compile and work.  This check fails when the two have drifted apart.
file(READ "${README}" readme)
file(READ "${SOURCE}" source)
# The licence line that opens every source file is not shown.
string(REGEX REPLACE "^/\\* SPDX-License-Identifier: [^\n]*\\*/\n\n?" "" source "${source}")
string(FIND "${readme}" "```c\n${source}```\n" at)
if(at EQUAL -1)
  message(FATAL_ERROR "FAIL: ${README} does not show ${SOURCE} verbatim in a ```c block")
endif()
message(STATUS "README.md shows examples/readme.c verbatim")
