#include "json.h"
void tarry_json_open(lua_State *L) { (void)L; }
