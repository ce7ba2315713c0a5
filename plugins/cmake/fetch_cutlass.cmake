# CUTLASS/CuTe headers (cutlass/ and cute/) from the PyPI wheel nvidia-cutlass, never committed.
# Included by plugins/CMakeLists.txt (-DATTNX_FETCH_CUTLASS=ON), or run on its own to prepare a folder
# that a machine without network then uses through -DCUTLASS_DIR (scripts/gpu-check.sh does):
#   cmake -DDEST=build/cutlass -P plugins/cmake/fetch_cutlass.cmake
# DEST receives include/cutlass and include/cute (27 MB). The wheel is a plain zip: no pip install.
if(NOT DEFINED ATTNX_CUTLASS_WHEEL)
  set(ATTNX_CUTLASS_WHEEL "nvidia-cutlass==4.2.0.0")
endif()

function(attnx_fetch_cutlass dest)
  if(EXISTS ${dest}/include/cute/tensor.hpp AND EXISTS ${dest}/include/cutlass/cutlass.h)
    return()
  endif()
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  message(STATUS "Fetching CUTLASS/CuTe headers from the PyPI wheel ${ATTNX_CUTLASS_WHEEL}")
  set(download ${dest}/_wheel)
  execute_process(
    COMMAND ${Python3_EXECUTABLE} -m pip download --no-deps --only-binary=:all: -d ${download} ${ATTNX_CUTLASS_WHEEL}
    RESULT_VARIABLE fetch_result OUTPUT_QUIET)
  file(GLOB wheel ${download}/*.whl)
  if(NOT fetch_result EQUAL 0 OR NOT wheel)
    message(FATAL_ERROR "could not download ${ATTNX_CUTLASS_WHEEL}; point CUTLASS_DIR at a CUTLASS checkout "
                        "(its include/ holds cutlass/ and cute/) instead")
  endif()
  file(ARCHIVE_EXTRACT INPUT ${wheel} DESTINATION ${download}/x PATTERNS cutlass_library/source/include)
  file(REMOVE_RECURSE ${dest}/include)
  file(MAKE_DIRECTORY ${dest})
  file(RENAME ${download}/x/cutlass_library/source/include ${dest}/include)
  file(REMOVE_RECURSE ${download})
endfunction()

if(CMAKE_SCRIPT_MODE_FILE)
  if(NOT DEST)
    message(FATAL_ERROR "usage: cmake -DDEST=folder -P plugins/cmake/fetch_cutlass.cmake")
  endif()
  get_filename_component(dest "${DEST}" ABSOLUTE)
  attnx_fetch_cutlass(${dest})
  message(STATUS "CUTLASS headers in ${dest}/include (pass -DCUTLASS_DIR=${dest})")
endif()
