# blasst_set_warnings(target): the project's warning set, -Werror when BLASST_WERROR is ON.
function(blasst_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${BLASST_WERROR}>>:-Werror>)
endfunction()
