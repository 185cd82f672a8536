(function(){
var bar=document.getElementById('plate-tools');if(!bar)return;
function plates(){return Array.prototype.slice.call(document.querySelectorAll('details.plate'));}
function button(id,label,open){var b=document.createElement('button');b.type='button';b.id=id;b.textContent=label;
 b.onclick=function(){plates().forEach(function(d){d.open=open;});};bar.appendChild(b);}
button('expand-all','Expand all plates',true);button('collapse-all','Collapse all',false);
var q=document.createElement('input');q.type='search';q.id='plate-filter';q.placeholder='Filter plates (name, date, donor, flag)';
q.size=36;bar.appendChild(q);
q.oninput=function(){var s=q.value.toLowerCase();document.querySelectorAll('#plate-index tbody tr').forEach(function(tr){
 tr.hidden=s!==''&&tr.textContent.toLowerCase().indexOf(s)<0;});};
function openTarget(){var id=decodeURIComponent(location.hash.slice(1));var d=id&&document.getElementById(id);
 if(d&&d.tagName==='DETAILS'){d.open=true;}}
window.addEventListener('hashchange',openTarget);openTarget();
var before=[];window.addEventListener('beforeprint',function(){before=plates().map(function(d){return d.open;});
 plates().forEach(function(d){d.open=true;});});
window.addEventListener('afterprint',function(){plates().forEach(function(d,i){d.open=before[i];});});
})();
